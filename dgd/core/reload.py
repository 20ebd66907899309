"""What a reload (SIGHUP) changes, and how each change is applied. This module does no I/O.

``plan_reload(old, new)`` compares the running configuration with the one just read and says,
section by section, what to do:

- in place, at once: ``[gate]``, ``[stream]``, ``[output]`` and ``[log]``;
- reopen capture: ``[audio]`` (a new device, rate, channel count or period). When the rate or
  the channel count changes, the audio after the reopen needs a stream whose handshake
  declares it: a ``FormatChange`` marker in the outbox makes the link end the current stream
  once the old audio is sent, and the next handshake declares the new format. Capture stops
  only for the reopen itself.
- reconnect gracefully: ``[deepgram]`` or the API key (the current stream ends with
  ``CloseStream``, so its finals arrive; the next handshake uses the new settings);
- refuse: a new file that does not parse; the running configuration stays.

The daemon executes plans one at a time; SIGHUPs that arrive meanwhile coalesce into one more
reload of the newest file, so any sequence of them ends with the daemon running exactly the
configuration in the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dgd.core.config import Config

#: The sections, in the order the ``reloaded`` event names them.
SECTIONS = ("deepgram", "audio", "gate", "stream", "output", "log")


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload does.

    Attributes:
        changed: the sections that differ (and ``api key``), in ``SECTIONS`` order.
        apply_in_place: gate, stream, output or log settings changed (applied at once).
        reopen_capture: the audio device or format changed.
        new_stream_format: the rate or channel count changed (a ``FormatChange`` is queued).
        reconnect: the Deepgram settings or the key changed (graceful reconnect).
        refused: why the new configuration was refused (empty: it was not).
    """

    changed: tuple[str, ...] = ()
    apply_in_place: bool = False
    reopen_capture: bool = False
    new_stream_format: bool = False
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
    return ReloadPlan(
        changed=tuple(changed),
        apply_in_place=any(name in changed for name in ("gate", "stream", "output", "log")),
        reopen_capture="audio" in changed,
        new_stream_format=(audio_old.rate, audio_old.channels)
        != (audio_new.rate, audio_new.channels),
        reconnect="deepgram" in changed or key_changed,
    )


def refuse(problems: str) -> ReloadPlan:
    """The plan for a new configuration that does not parse: change nothing."""
    return ReloadPlan(refused=tuple(line for line in problems.splitlines() if line.strip()))
