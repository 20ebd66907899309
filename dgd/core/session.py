"""The Deepgram live-stream session, sans I/O: frames out, typed events in, keep-alive timing.

One ``Session`` lives as long as one WebSocket connection. It turns audio frames and control
commands into what goes on the wire, parses what comes back into events with wall-clock times
(through the connection's ``TimeMap``), and says when the next ``KeepAlive`` is due. It never
sends an empty binary frame: Deepgram reads one as "close the stream" (docs/DEEPGRAM.md).
Time (``now``) is a parameter: a monotonic clock reading chosen by the caller.
This module does no I/O.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Final

from dgd.core.backoff import Failure, classify_close, network_failure
from dgd.core.connection import ABNORMAL_CLOSURE, NORMAL_CLOSURE, parse_close
from dgd.core.events import AudioFrame, TimedWord, Transcript
from dgd.core.messages import (
    CLOSESTREAM_MESSAGE,
    FINALIZE_MESSAGE,
    KEEPALIVE_MESSAGE,
    ConfigureFailure,
    ConfigureSuccess,
    Metadata,
    Repaired,
    ServerError,
    SpeechStarted,
    TranscriptResult,
    Unrecognized,
    UtteranceEnd,
    excerpt,
    parse_server_message,
)
from dgd.core.timemap import TimeMap

#: How far past the audio sent on a connection a server time may lie (seconds): room for a
#: server that pads its last result a little, far less than a word. Anything later is not
#: about audio dgd sent; accepted, it would stamp a transcript in the future (or beyond what a
#: date can hold), release audio no final has covered, and make the duplicate filter drop
#: every later transcript.
SENT_TOLERANCE_S: Final = 1.0


class LocalProtocolError(Exception):
    """The caller asked for something the protocol forbids (a bug in dgd, not the server)."""


class SessionState(enum.Enum):
    """Where the session is in its life."""

    OPEN = "open"  # audio and control messages may be sent
    CLOSING = "closing"  # CloseStream sent: waiting for the last results and Metadata
    CLOSED = "closed"  # the connection is gone


@dataclass(frozen=True, slots=True)
class Confirmed:
    """A final result covered this connection's audio up to ``offset_s``: it is safe."""

    offset_s: float


@dataclass(frozen=True, slots=True)
class Marker:
    """A server event mapped to wall-clock capture time (UtteranceEnd, SpeechStarted)."""

    kind: str
    at_s: float


SessionEvent = (
    Transcript
    | Confirmed
    | Marker
    | Metadata
    | ServerError
    | ConfigureSuccess
    | ConfigureFailure
    | Unrecognized
)


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    """What one stream, or several added with ``+``, sent and received.

    Attributes:
        sent_s: seconds of audio sent.
        keepalives: ``KeepAlive`` messages sent.
        finalizes: ``Finalize`` messages sent.
        results: ``Results`` messages received (interim and final).
        unrecognized: server messages that were ignored (malformed, unknown, impossible
            times, a time beyond the audio sent, or a transcript before any audio) or used only
            after their text was repaired (lone surrogates replaced by U+FFFD).
    """

    sent_s: float = 0.0
    keepalives: int = 0
    finalizes: int = 0
    results: int = 0
    unrecognized: int = 0

    def __add__(self, other: SessionStatistics) -> SessionStatistics:
        return SessionStatistics(
            sent_s=self.sent_s + other.sent_s,
            keepalives=self.keepalives + other.keepalives,
            finalizes=self.finalizes + other.finalizes,
            results=self.results + other.results,
            unrecognized=self.unrecognized + other.unrecognized,
        )


class Session:
    """One Deepgram live-transcription stream.

    Args:
        keepalive_interval_s: send ``KeepAlive`` when nothing was sent for this long
            (Deepgram closes a stream with 1011/NET-0001 after 10 s without a message).
        now: the monotonic time at which the connection opened.
    """

    def __init__(self, *, keepalive_interval_s: float, now: float) -> None:
        self.state = SessionState.OPEN
        self.timemap = TimeMap()
        self._keepalives = 0
        self._finalizes = 0
        self._results = 0
        self._unrecognized = 0
        self.request_id = ""
        self.metadata: Metadata | None = None
        self._metadata_after_close = False
        self._keepalive_interval_s = keepalive_interval_s
        self._last_sent_at = now

    # -- outgoing ------------------------------------------------------------------------

    def send_audio(self, frame: AudioFrame, now: float) -> bytes:
        """Return the binary payload for ``frame`` and record where it lands in the stream.

        Raises:
            LocalProtocolError: the frame is empty, or the stream is closing.
        """
        if not frame.data:
            raise LocalProtocolError(
                "refusing to send an empty binary frame (Deepgram closes on it)"
            )
        self._require_open("audio")
        self.timemap.append(frame.start_s, frame.duration_s)
        self._last_sent_at = now
        return frame.data

    def finalize(self, now: float) -> str:
        """Return the ``Finalize`` text frame: flush what Deepgram holds into final results."""
        self._require_open("Finalize")
        self._finalizes += 1
        self._last_sent_at = now
        return FINALIZE_MESSAGE

    def configure(self, text: str, now: float) -> str:
        """Return ``text``, a ``Configure`` text frame (``dgd.core.messages.configure_message``),
        to send now: it counts as traffic for the keep-alive timer."""
        self._require_open("Configure")
        self._last_sent_at = now
        return text

    def close_stream(self, now: float) -> str:
        """Return the ``CloseStream`` text frame; afterwards only results come back."""
        self._require_open("CloseStream")
        self.state = SessionState.CLOSING
        self._last_sent_at = now
        return CLOSESTREAM_MESSAGE

    def keepalive_due_at(self) -> float:
        """When the next ``KeepAlive`` is due (``inf`` once the stream is closing)."""
        if self.state is not SessionState.OPEN:
            return math.inf
        return self._last_sent_at + self._keepalive_interval_s

    def handle_timer(self, now: float) -> str | None:
        """Return the ``KeepAlive`` text frame if it is due at ``now``, else None."""
        if now < self.keepalive_due_at():
            return None
        self._keepalives += 1
        self._last_sent_at = now
        return KEEPALIVE_MESSAGE

    def statistics(self) -> SessionStatistics:
        """What this stream sent and received so far."""
        return SessionStatistics(
            sent_s=self.timemap.sent_s,
            keepalives=self._keepalives,
            finalizes=self._finalizes,
            results=self._results,
            unrecognized=self._unrecognized,
        )

    @property
    def finished(self) -> bool:
        """The stream ended as asked: ``CloseStream`` was sent and ``Metadata`` came after it."""
        return self.state is SessionState.CLOSING and self._metadata_after_close

    def closed(self, code: int, reason: str) -> Failure | None:
        """The connection closed with ``code`` and ``reason``.

        Returns:
            None when this is the graceful end of a stream dgd asked to close (1000 after
            ``CloseStream``); otherwise the failure, classified for the supervisor (a 1000
            dgd did not ask for means the stream ended early, e.g. after an empty frame).
        """
        graceful = self.state is SessionState.CLOSING and code == NORMAL_CLOSURE
        self.state = SessionState.CLOSED
        if graceful:
            return None
        if code == ABNORMAL_CLOSURE:
            return network_failure("the connection dropped without a close frame (1006)")
        return classify_close(parse_close(code, reason))

    def connection_lost(self) -> None:
        """The WebSocket is gone; nothing more can be sent."""
        self.state = SessionState.CLOSED

    def _require_open(self, what: str) -> None:
        if self.state is not SessionState.OPEN:
            raise LocalProtocolError(f"cannot send {what}: the stream is {self.state.value}")

    # -- incoming ------------------------------------------------------------------------

    def receive(self, payload: str | bytes) -> list[SessionEvent]:
        """Parse one server message into events; never raises on bad content.

        A final result yields ``Confirmed`` (its audio is safe) and, unless its transcript is
        empty, a ``Transcript`` with wall-clock times. A message the parser rejects, or one
        with a time more than ``SENT_TOLERANCE_S`` beyond the audio sent on this connection,
        yields only ``Unrecognized``: no transcript, no confirmation. A message whose text was
        repaired (``Repaired``) yields its events after an ``Unrecognized`` that says so.
        Each of these counts once in ``statistics().unrecognized``. ``ServerError``,
        ``ConfigureSuccess`` and ``ConfigureFailure`` carry no stream time and are yielded as
        they are, for the link to act on.
        """
        message = parse_server_message(payload)
        note: Unrecognized | None = None
        if isinstance(message, Repaired):
            note = Unrecognized(message.reason, message.excerpt)
            message = message.message
        if isinstance(message, Unrecognized):
            self._unrecognized += 1
            return [message]
        if isinstance(message, ServerError | ConfigureSuccess | ConfigureFailure):
            return [message]  # no stream time: the link acts on them
        beyond = self._beyond_sent(message)
        if beyond is not None:
            self._unrecognized += 1
            return [Unrecognized(beyond, excerpt(payload))]
        events: list[SessionEvent] = []
        if note is not None:
            self._unrecognized += 1
            events.append(note)
        if isinstance(message, TranscriptResult):
            return events + self._on_result(message)
        if isinstance(message, Metadata):
            self.metadata = message
            # Deepgram sends Metadata as its last message after CloseStream; one that came
            # earlier (the API calls it periodic) does not end the stream.
            self._metadata_after_close |= self.state is SessionState.CLOSING
            self.request_id = self.request_id or message.request_id
            return [*events, message]
        if isinstance(message, UtteranceEnd):
            return self._marker("utterance_end", message.last_word_end_s, is_end=True)
        return self._marker("speech_started", message.timestamp_s)

    def _beyond_sent(
        self, message: TranscriptResult | Metadata | UtteranceEnd | SpeechStarted
    ) -> str | None:
        """Why ``message`` cannot be about audio sent on this connection, or None if it can.

        Its latest time (a result's end or a word's, a marker's time) may exceed the audio
        sent by ``SENT_TOLERANCE_S`` at most. Metadata carries no stream time.
        """
        if isinstance(message, TranscriptResult):
            latest_s = max([message.end_s, *(word.end_s for word in message.words)])
            kind = "Results"
        elif isinstance(message, UtteranceEnd):
            latest_s, kind = message.last_word_end_s, "UtteranceEnd"
        elif isinstance(message, SpeechStarted):
            latest_s, kind = message.timestamp_s, "SpeechStarted"
        else:
            return None
        sent_s = self.timemap.sent_s
        if latest_s <= sent_s + SENT_TOLERANCE_S:
            return None
        # The numbers come last: the link's repeat filter keys on the reason's first words.
        return (
            f"{kind}: time beyond the audio sent on this connection: {latest_s:g} s, "
            f"{sent_s:g} s sent"
        )

    def _marker(self, kind: str, offset_s: float, *, is_end: bool = False) -> list[SessionEvent]:
        if not self.timemap.segments:
            return []
        return [Marker(kind, self.timemap.to_wall(offset_s, is_end=is_end))]

    def _on_result(self, result: TranscriptResult) -> list[SessionEvent]:
        self._results += 1
        if result.request_id:
            self.request_id = result.request_id
        events: list[SessionEvent] = []
        if result.is_final:
            events.append(Confirmed(result.end_s))
        if not result.transcript:
            return events
        if not self.timemap.segments:
            self._unrecognized += 1
            events.append(Unrecognized("a transcript arrived before any audio was sent", ""))
            return events
        to_wall = self.timemap.to_wall
        words = tuple(
            TimedWord(
                w.punctuated_word or w.word,
                to_wall(w.start_s),
                to_wall(w.end_s, is_end=True),
                w.confidence,
            )
            for w in result.words
        )
        events.insert(
            0,
            Transcript(
                text=result.transcript,
                is_final=result.is_final,
                speech_final=result.speech_final,
                from_finalize=result.from_finalize,
                confidence=result.confidence,
                start_s=to_wall(result.start_s),
                end_s=to_wall(result.end_s, is_end=True),
                request_id=result.request_id or self.request_id,
                words=words,
            ),
        )
        return events


#: Deepgram throttles audio arriving faster than 1.25× real time (Deepgram's "Recovering from
#: connection errors" page), so a replay after an outage is paced at that speed: faster would
#: only queue on the server.
REPLAY_SPEED: Final = 1.25
#: Audio that may go out at once before pacing applies (covers the gate's pre-roll burst).
PACING_BURST_S: Final = 2.0
#: Shorter pacing waits are not waited for.
PACING_RESOLUTION_S: Final = 0.001


@dataclass(frozen=True, slots=True)
class ReplayPacer:
    """How long to wait before sending the next frame on a stream, so that audio never goes
    out faster than ``speed`` × real time after the first ``burst_s``.

    Attributes:
        started_at: the monotonic time the stream opened.
    """

    started_at: float
    speed: float = REPLAY_SPEED
    burst_s: float = PACING_BURST_S

    def wait_s(self, now: float, sent_s: float, next_s: float) -> float:
        """Seconds to wait before sending ``next_s`` more audio after ``sent_s`` (0: now).

        A wait under ``PACING_RESOLUTION_S`` is 0: it is not worth a wake-up, and a wait
        that rounds away when added to ``now`` would never elapse (the sender would spin).
        """
        budget_s = self.burst_s + (now - self.started_at) * self.speed
        wait_s = (sent_s + next_s - budget_s) / self.speed
        return wait_s if wait_s >= PACING_RESOLUTION_S else 0.0


class DuplicateFilter:
    """Drops a final transcript that repeats audio already transcribed (a replay overlap).

    Replay starts where the last final result ended, so duplicates should not happen; this is
    the safety net that keeps the journal honest if the server cut differently on replay.
    Its high-water mark is only as good as the times it is given: the session rejects any
    result whose times lie beyond the audio sent (``Session.receive``), so one broken result
    cannot push the mark into the future and silence every later transcript.
    """

    def __init__(self) -> None:
        self._last_final_end_s = -math.inf
        self.duplicates = 0

    def accept(self, transcript: Transcript) -> bool:
        """True if the transcript is new; finals advance the high-water mark."""
        if transcript.end_s <= self._last_final_end_s + 1e-3:
            if transcript.is_final:
                self.duplicates += 1
            return False
        if transcript.is_final:
            self._last_final_end_s = transcript.end_s
        return True
