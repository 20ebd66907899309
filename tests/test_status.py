"""The STATUS= line (dgd.core.status): the parts' states in, one exact line out."""

from __future__ import annotations

from typing import TypedDict

import pytest

from dgd.core.gate import GateMode
from dgd.core.status import StatusBoard, duration_text


class _Streaming(TypedDict):
    device_ok: bool
    link: str


STREAMING: _Streaming = {"device_ok": True, "link": "streaming"}


@pytest.mark.parametrize(
    ("board", "expected"),
    [
        pytest.param(StatusBoard(), "starting capture", id="start"),
        pytest.param(
            StatusBoard(device='waiting for audio device "hw:X"', link="streaming"),
            'waiting for audio device "hw:X"',
            id="device-trouble-first",
        ),
        pytest.param(
            StatusBoard(device_ok=True, link="reconnecting in 3.2 s (attempt 4)"),
            "reconnecting in 3.2 s (attempt 4)",
            id="then-the-link",
        ),
        pytest.param(StatusBoard(**STREAMING), "gated: silence", id="gated"),
        pytest.param(StatusBoard(**STREAMING, gate_open=True), "streaming", id="speech"),
        pytest.param(StatusBoard(**STREAMING, gate_mode=GateMode.OFF), "streaming", id="gate-off"),
        pytest.param(
            StatusBoard(**STREAMING, gate_mode=GateMode.SHADOW), "streaming", id="gate-shadow"
        ),
        pytest.param(
            StatusBoard(**STREAMING, gist="sent 12 s of 15.2 min captured"),
            "gated: silence; sent 12 s of 15.2 min captured",
            id="with-gist",
        ),
    ],
)
def test_render(board: StatusBoard, expected: str) -> None:
    assert board.render() == expected


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.0, "0 s"), (42.4, "42 s"), (119.4, "119 s"), (912.0, "15.2 min")]
)
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text
