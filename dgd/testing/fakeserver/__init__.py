"""``dgd fake-server``: a local Deepgram-compatible ``/v1/listen`` server with fault injection.

It answers the live STT protocol of ``docs/FAKE_SERVER.md`` (handshake checks, Results built
from its own energy detector, Finalize/CloseStream/KeepAlive, the 10 s idle close), records
every connection attempt when asked to, and injects the faults of a JSON fault plan (rejected
handshakes, TCP drops, error closes, stalls, malformed messages, ``Error`` messages,
refused or ignored ``Configure``). It serves TLS (``--tls-cert``) and temporary tokens. It
never recognises speech: a transcript says how much voiced audio a span held, so tests can
compute it from the bytes.

The modules, from the outside in:

- ``server.py``: ``serve`` (the listener; one attempt counter per call), each TCP
  connection's handshake (decide, record, reject or accept), and ``main``, the command line.
- ``grant.py``: ``POST /v1/auth/grant`` on the same port (temporary tokens for
  ``Authorization: Bearer``, remembered until they expire), and the replay of a request line
  that is not a grant into the WebSocket handshake.
- ``handshake.py``: the checks of a handshake and their answer: ``auth_ok``,
  ``parse_options`` (the query as ``StreamOptions``), ``Rejection`` (status and Deepgram's
  error body). No I/O.
- ``connection.py``: one accepted WebSocket: the receive loop, control messages, the idle
  close, the timed faults, and the TCP stream that can stall or be aborted.
- ``speech.py``: ``SpeechTracker``, the fake recogniser: audio bytes in, ``Results``,
  ``SpeechStarted``, ``UtteranceEnd`` and ``Metadata`` message objects out; ``Configure``
  changes its keyterms (``ConfigureSuccess``/``ConfigureFailure``). No I/O.
- ``faults.py``: ``FaultPlan`` and its rules and actions, parsed and validated from JSON
  (``FaultPlanError``). No I/O.
- ``malformed.py``: the messages of each kind the ``malformed_after_s`` fault sends: broken
  messages, and well-formed Results with hostile content (impossible times, lone
  surrogates), built from a template of the connection's current state. No I/O.
- ``recorder.py``: ``conn-NNNN.raw``/``.jsonl`` of ``--record-dir``, secrets redacted.

The secret query keys come from ``dgd.core.connection``, shared with the daemon. Names with
a leading underscore are shared between these modules only; the names below are the public ones.
"""

from __future__ import annotations

from dgd.testing.fakeserver.connection import IDLE_CLOSE_REASON
from dgd.testing.fakeserver.faults import (
    DEFAULT_CLOSE_FAULT_REASON,
    HOSTILE_KINDS,
    MALFORMED_KINDS,
    Attempts,
    CloseAfterFault,
    ConfigureFault,
    DropAfterBytesFault,
    DropAfterFault,
    ErrorAfterFault,
    Fault,
    FaultPlan,
    FaultPlanError,
    FaultRule,
    MalformedFault,
    RejectFault,
    StallFault,
)
from dgd.testing.fakeserver.handshake import (
    DEFAULT_ENDPOINTING_MS,
    StreamOptions,
    auth_ok,
    parse_options,
)
from dgd.testing.fakeserver.server import main, serve, tls_server_context
from dgd.testing.fakeserver.speech import MODEL_UUID, SpeechTracker

__all__ = [
    "DEFAULT_CLOSE_FAULT_REASON",
    "DEFAULT_ENDPOINTING_MS",
    "HOSTILE_KINDS",
    "IDLE_CLOSE_REASON",
    "MALFORMED_KINDS",
    "MODEL_UUID",
    "Attempts",
    "CloseAfterFault",
    "ConfigureFault",
    "DropAfterBytesFault",
    "DropAfterFault",
    "ErrorAfterFault",
    "Fault",
    "FaultPlan",
    "FaultPlanError",
    "FaultRule",
    "MalformedFault",
    "RejectFault",
    "SpeechTracker",
    "StallFault",
    "StreamOptions",
    "auth_ok",
    "main",
    "parse_options",
    "serve",
    "tls_server_context",
]
