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
from dgd.core.reload import ReloadPlan, plan_reload, refuse, supports_configure

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


# --- changes Configure can make on the open stream -------------------------------------------

BASE_QUERY = DeepgramConfig().query


def query(*extra: tuple[str, str], base: tuple[tuple[str, str], ...] = BASE_QUERY) -> Config:
    return changed(deepgram=DeepgramConfig(query=base + extra))


def configured(text: str) -> ReloadPlan:
    return ReloadPlan(changed=("deepgram",), configure=text)


RECONNECT = ReloadPlan(changed=("deepgram",), reconnect=True)
WITH_TERMS = (("keyterm", "Acme"), ("keyterm", "Zoë"))


@pytest.mark.parametrize(
    ("old", "new", "key_changed", "expected"),
    [
        pytest.param(
            OLD,
            query(("keyterm", "Acme")),
            False,
            configured('{"type":"Configure","keyterms":["Acme"]}'),
            id="keyterm-added",
        ),
        pytest.param(
            query(*WITH_TERMS),
            query(("keyterm", "Acme"), ("keyterm", "Bob")),
            False,
            configured('{"type":"Configure","keyterms":["Acme","Bob"]}'),
            id="keyterm-replaced-all-sent",
        ),
        pytest.param(
            query(*WITH_TERMS),
            OLD,
            False,
            configured('{"type":"Configure","keyterms":[]}'),
            id="keyterms-removed-cleared",
        ),
        pytest.param(
            OLD,
            query(("numerals", "true")),
            False,
            configured('{"type":"Configure","features":{"numerals":true}}'),
            id="numerals-on",
        ),
        pytest.param(
            query(("numerals", "true")),
            OLD,
            False,
            configured('{"type":"Configure","features":{"numerals":false}}'),
            id="numerals-removed-off",
        ),
        pytest.param(
            query(("keyterm", "Acme")),
            query(("numerals", "true"), ("keyterm", "Bob")),
            False,
            configured('{"type":"Configure","keyterms":["Bob"],"features":{"numerals":true}}'),
            id="both",
        ),
        pytest.param(OLD, query(("numerals", "1")), False, RECONNECT, id="numerals-not-bool"),
        pytest.param(
            OLD,
            query(("keyterm", "Acme"), ("diarize", "true")),
            False,
            RECONNECT,
            id="keyterm-and-another-parameter",
        ),
        pytest.param(
            query(("keyterm", "Acme")),
            query(("keyterm", "Acme"), base=tuple(reversed(BASE_QUERY))),
            False,
            RECONNECT,
            id="other-parameters-reordered",
        ),
        pytest.param(
            OLD,
            query(("keyterm", "Acme")),
            True,
            ReloadPlan(changed=("deepgram", "api key"), reconnect=True),
            id="keyterm-and-key",
        ),
        pytest.param(
            changed(deepgram=DeepgramConfig(url="wss://api.eu.deepgram.com/v1/listen")),
            changed(
                deepgram=DeepgramConfig(
                    url="wss://api.eu.deepgram.com/v1/listen",
                    query=(*BASE_QUERY, ("keyterm", "Acme")),
                )
            ),
            False,
            RECONNECT,
            id="regional-endpoint-reconnects",
        ),
        pytest.param(
            changed(deepgram=DeepgramConfig(url="ws://10.0.0.5:8080/v1/listen")),
            changed(
                deepgram=DeepgramConfig(
                    url="ws://10.0.0.5:8080/v1/listen",
                    query=(*BASE_QUERY, ("keyterm", "Acme")),
                )
            ),
            False,
            configured('{"type":"Configure","keyterms":["Acme"]}'),
            id="self-hosted-tries-configure",
        ),
        pytest.param(
            query(("keyterm", "Acme"), ("numerals", "true")),
            query(("numerals", "true"), ("keyterm", "Acme")),
            False,
            RECONNECT,
            id="only-their-order-moved",
        ),
    ],
)
def test_configure_plan(old: Config, new: Config, key_changed: bool, expected: ReloadPlan) -> None:
    assert plan_reload(old, new, key_changed=key_changed) == expected


@pytest.mark.parametrize(
    ("url", "supported"),
    [
        ("wss://api.deepgram.com/v1/listen", True),
        ("wss://API.Deepgram.com./v1/listen", True),
        ("wss://api.eu.deepgram.com/v1/listen", False),
        ("wss://api.in.deepgram.com/v1/listen", False),
        ("wss://api.au.deepgram.com/v1/listen", False),
        ("wss://api.us.deepgram.com/v1/listen", False),
        ("ws://127.0.0.1:8765/v1/listen", True),
        ("wss://stt.example.org/v1/listen", True),
    ],
)
def test_supports_configure(url: str, supported: bool) -> None:
    assert supports_configure(url) is supported
