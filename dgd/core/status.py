"""What ``STATUS=`` says (``systemctl status dgd``), composed from the parts' states.

This module does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from dgd.core.gate import GateMode


def duration_text(seconds: float) -> str:
    """``42 s`` or, from two minutes on, ``15.2 min`` (for STATUS=, read by people)."""
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


@dataclass(slots=True)
class StatusBoard:
    """The parts' states; ``render()`` is the one line systemd shows.

    The device's trouble comes first (nothing else matters without audio), then the link's,
    then whether speech is being sent; the counters' gist follows.
    """

    device: str = "starting capture"
    device_ok: bool = False
    link: str = "connecting"
    gate_open: bool = False
    gate_mode: GateMode = GateMode.ENERGY
    gist: str = ""  # the counters in a few words, refreshed with every stats record

    def render(self) -> str:
        """The ``STATUS=`` line."""
        if not self.device_ok:
            state = self.device
        elif self.link != "streaming":
            state = self.link
        elif self.gate_mode is GateMode.ENERGY and not self.gate_open:
            state = "gated: silence"
        else:
            state = "streaming"
        return f"{state}; {self.gist}" if self.gist else state
