"""The journal lines for what the capture pipeline notices (``dgd.core.events.CaptureNotice``).

One place says, in words an operator can act on, what each notice means.
"""

from __future__ import annotations

import logging

from dgd.core.events import (
    CaptureNotice,
    DigitalSilence,
    GateClosed,
    GateOpened,
    InvalidBuffer,
    Overrun,
    SignalReturned,
)
from dgd.daemon.logsetup import event


def log_notice(item: CaptureNotice, device: str) -> None:
    """Log ``item``, a notice about audio device ``device``, as its event."""
    if isinstance(item, GateOpened):
        event(
            "gate_open",
            "speech: level %.1f dBFS above threshold %.1f dBFS",
            item.level_dbfs,
            item.threshold_dbfs,
            level=logging.DEBUG,
            level_dbfs=f"{item.level_dbfs:.1f}",
        )
    elif isinstance(item, GateClosed):
        event("gate_close", "silence: gate closed", level=logging.DEBUG)
    elif isinstance(item, DigitalSilence):
        event(
            "digital_silence",
            'audio device "%s" has delivered only exact zeros for %.0f s: the input is '
            "muted or dead (check `alsamixer` capture levels and the microphone), not "
            "just a quiet room",
            device,
            item.duration_s,
            level=logging.WARNING,
        )
    elif isinstance(item, SignalReturned):
        event(
            "signal_returned",
            "input signal is back after %.0f s of digital silence",
            item.silent_s,
        )
    elif isinstance(item, InvalidBuffer):
        event(
            "invalid_buffer",
            "dropped a capture buffer of %d bytes, not a whole number of %d-byte "
            "sample frames: never sent (the audio driver returned a broken read)",
            item.length_bytes,
            item.frame_bytes,
            level=logging.WARNING,
            repeat_key="invalid-buffer",
        )
    elif isinstance(item, Overrun):
        event(
            "overrun",
            'audio device "%s" overran: the kernel dropped audio before dgd could read '
            "it (the CPU was too busy, or the capture thread was held up); capture "
            "goes on",
            device,
            level=logging.WARNING,
            repeat_key="overrun",
            partial_bytes_dropped=item.partial_bytes_dropped,
        )
