"""The reload plan (dgd.core.reload): old and new configuration in, an exact plan out."""

from __future__ import annotations

import dataclasses

import pytest

from dgd.core.config import (
    AudioConfig,
    Config,
    DeepgramConfig,
    GateConfig,
    LogConfig,
    LogLevel,
    OutputConfig,
    StreamConfig,
)
from dgd.core.gate import GateMode
from dgd.core.reload import ReloadPlan, plan_reload, refuse

OLD = Config()


def changed(**sections: object) -> Config:
    return dataclasses.replace(OLD, **sections)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("new", "key_changed", "expected"),
    [
        pytest.param(OLD, False, ReloadPlan(), id="nothing"),
        pytest.param(
            changed(gate=GateConfig(hangover_ms=900)),
            False,
            ReloadPlan(changed=("gate",), apply_in_place=True),
            id="gate-in-place",
        ),
        pytest.param(
            changed(output=OutputConfig(journald=False), log=LogConfig(level=LogLevel.DEBUG)),
            False,
            ReloadPlan(changed=("output", "log"), apply_in_place=True),
            id="output-and-log-in-place",
        ),
        pytest.param(
            changed(stream=StreamConfig(frame_ms=200)),
            False,
            ReloadPlan(changed=("stream",), apply_in_place=True),
            id="stream-in-place",
        ),
        pytest.param(
            changed(audio=AudioConfig(device="hw:CARD=Other,DEV=0")),
            False,
            ReloadPlan(changed=("audio",), reopen_capture=True),
            id="new-device-same-stream",
        ),
        pytest.param(
            changed(audio=AudioConfig(period_ms=10)),
            False,
            ReloadPlan(changed=("audio",), reopen_capture=True),
            id="new-period-same-stream",
        ),
        pytest.param(
            changed(audio=AudioConfig(rate=8000)),
            False,
            ReloadPlan(changed=("audio",), reopen_capture=True, new_stream_format=True),
            id="new-rate-new-stream",
        ),
        pytest.param(
            changed(audio=AudioConfig(channels=2)),
            False,
            ReloadPlan(changed=("audio",), reopen_capture=True, new_stream_format=True),
            id="new-channels-new-stream",
        ),
        pytest.param(
            changed(deepgram=DeepgramConfig(url="wss://api.eu.deepgram.com/v1/listen")),
            False,
            ReloadPlan(changed=("deepgram",), reconnect=True),
            id="deepgram-reconnects",
        ),
        pytest.param(
            OLD, True, ReloadPlan(changed=("api key",), reconnect=True), id="key-reconnects"
        ),
        pytest.param(
            changed(audio=AudioConfig(rate=8000), gate=GateConfig(mode=GateMode.OFF)),
            True,
            ReloadPlan(
                changed=("audio", "gate", "api key"),
                apply_in_place=True,
                reopen_capture=True,
                new_stream_format=True,
                reconnect=True,
            ),
            id="everything",
        ),
    ],
)
def test_plan(new: Config, key_changed: bool, expected: ReloadPlan) -> None:
    assert plan_reload(OLD, new, key_changed=key_changed) == expected


def test_a_config_that_does_not_parse_is_refused() -> None:
    plan = refuse("gate.hangover_ms: must be >= 0 (got -5)\n\naudio.rate: must be > 0\n")
    assert plan.refused == ("gate.hangover_ms: must be >= 0 (got -5)", "audio.rate: must be > 0")
    assert not plan.nothing
    assert plan == ReloadPlan(refused=plan.refused)  # and nothing else
    assert ReloadPlan().nothing
