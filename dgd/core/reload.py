"""What a reload (SIGHUP) changes, and how each change is applied. This module does no I/O.

``plan_reload(old, new)`` compares the running configuration with the one just read and says,
section by section, what to do:

- in place, at once: ``[gate]``, ``[stream]``, ``[output]`` and ``[log]``;
- reopen capture: ``[audio]`` (a new device, rate, channel count or period). When the rate or
  the channel count changes, the audio after the reopen needs a stream whose handshake
  declares it: a ``FormatChange`` marker in the outbox makes the link end the current stream
  once the old audio is sent, and the next handshake declares the new format. Capture stops
  only for the reopen itself.
- configure the open stream: a change only to ``[deepgram.query]`` parameters that Deepgram's
  ``Configure`` message can change mid-stream (``keyterm``, ``numerals``:
  ``dgd.core.messages.CONFIGURABLE_QUERY_KEYS``), on an endpoint that supports it, with the
  key unchanged. No audio stops; the link waits for ``ConfigureSuccess`` and falls back to a
  graceful reconnect when the server refuses or does not answer (``dgd.daemon.link``). Later
  handshakes carry the new parameters in any case.
- reconnect gracefully: any other ``[deepgram]`` change or the API key (the current stream
  ends with ``CloseStream``, so its finals arrive; the next handshake uses the new settings);
- refuse: a new file that does not parse; the running configuration stays.

The daemon executes plans one at a time; SIGHUPs that arrive meanwhile coalesce into one more
reload of the newest file, so any sequence of them ends with the daemon running exactly the
configuration in the file.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dgd.core.connection import REGION_HOSTS, is_deepgram_host
from dgd.core.messages import CONFIGURABLE_QUERY_KEYS, configure_message

if TYPE_CHECKING:
    from dgd.core.config import Config, DeepgramConfig

#: The sections, in the order the ``reloaded`` event names them.
SECTIONS = ("deepgram", "audio", "gate", "stream", "output", "log")
#: The Deepgram-hosted endpoints that take ``Configure`` on ``/v1/listen`` (Deepgram docs
#: "Configure": the global endpoint only, "not yet" EU, Australia or India; the US endpoint is
#: not named). Self-hosted servers (any host outside deepgram.com) are tried: one that does
#: not know the message costs a bounded wait, then the reconnect.
CONFIGURE_HOSTS: Final = frozenset({REGION_HOSTS["global"]})


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload does.

    Attributes:
        changed: the sections that differ (and ``api key``), in ``SECTIONS`` order.
        apply_in_place: gate, stream, output or log settings changed (applied at once).
        reopen_capture: the audio device or format changed.
        new_stream_format: the rate or channel count changed (a ``FormatChange`` is queued).
        configure: the ``Configure`` text frame that applies the change to the open stream
            (``""``: none); set only when that is the whole of the Deepgram change.
        reconnect: the Deepgram settings or the key changed (graceful reconnect).
        refused: why the new configuration was refused (empty: it was not).
    """

    changed: tuple[str, ...] = ()
    apply_in_place: bool = False
    reopen_capture: bool = False
    new_stream_format: bool = False
    configure: str = ""
    reconnect: bool = False
    refused: tuple[str, ...] = ()

    @property
    def nothing(self) -> bool:
        """True when the reload changes nothing at all."""
        return not self.changed and not self.refused


def plan_reload(old: Config, new: Config, *, key_changed: bool = False) -> ReloadPlan:
    """The plan that takes a daemon running ``old`` to ``new``."""
    changed = [name for name in SECTIONS if getattr(old, name) != getattr(new, name)]
    if key_changed:
        changed.append("api key")
    audio_old, audio_new = old.audio, new.audio
    configure = (
        configure_change(old.deepgram, new.deepgram)
        if "deepgram" in changed and not key_changed
        else ""
    )
    return ReloadPlan(
        changed=tuple(changed),
        apply_in_place=any(name in changed for name in ("gate", "stream", "output", "log")),
        reopen_capture="audio" in changed,
        new_stream_format=(audio_old.rate, audio_old.channels)
        != (audio_new.rate, audio_new.channels),
        configure=configure,
        reconnect=("deepgram" in changed and not configure) or key_changed,
    )


def supports_configure(url: str) -> bool:
    """True when the endpoint at ``url`` is known to take, or may take, ``Configure``: the
    global Deepgram endpoint, or a self-hosted server (any host outside deepgram.com)."""
    host = (urllib.parse.urlsplit(url).hostname or "").rstrip(".").lower()
    return host in CONFIGURE_HOSTS or not is_deepgram_host(url)


def configure_change(old: DeepgramConfig, new: DeepgramConfig) -> str:
    """The ``Configure`` text frame that takes an open stream from ``old`` to ``new``, or
    ``""`` when the change needs a new stream.

    It is ``""`` unless everything but the configurable query parameters
    (``CONFIGURABLE_QUERY_KEYS``) is equal, the other parameters keep their order, the
    endpoint supports ``Configure`` (``supports_configure``), and ``numerals`` (if it changed)
    is ``true`` or ``false``. ``keyterms`` is sent only when a keyterm changed (all of them:
    Configure replaces the list; none left clears it), ``features.numerals`` only when
    ``numerals`` changed (absent means off, Deepgram's default).
    """
    if old == new or not supports_configure(new.url):
        return ""
    if _fixed_part(old) != _fixed_part(new):
        return ""
    old_terms, new_terms = _values(old, "keyterm"), _values(new, "keyterm")
    old_numerals, new_numerals = _values(old, "numerals"), _values(new, "numerals")
    numerals: bool | None = None
    if old_numerals != new_numerals:
        wanted = new_numerals[-1] if new_numerals else "false"
        if wanted not in ("true", "false"):
            return ""
        numerals = wanted == "true"
    keyterms = new_terms if old_terms != new_terms else None
    if keyterms is None and numerals is None:
        return ""  # e.g. only the order of keyterm and numerals among each other moved
    return configure_message(keyterms=keyterms, numerals=numerals)


def _fixed_part(config: DeepgramConfig) -> DeepgramConfig:
    """Everything a ``Configure`` cannot change: the whole section (so a key added to it later
    counts too) without the configurable query parameters."""
    fixed_query = tuple(pair for pair in config.query if pair[0] not in CONFIGURABLE_QUERY_KEYS)
    return dataclasses.replace(config, query=fixed_query)


def _values(config: DeepgramConfig, key: str) -> tuple[str, ...]:
    return tuple(value for name, value in config.query if name == key)


def refuse(problems: str) -> ReloadPlan:
    """The plan for a new configuration that does not parse: change nothing."""
    return ReloadPlan(refused=tuple(line for line in problems.splitlines() if line.strip()))
