"""Tests for dgd.core.config (parsing, validation messages, writing, redaction) and
dgd.daemon.configfile (the file and the API key), and etc/dgd.toml."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import replace
from pathlib import Path

import h11
import pytest
import trio_websocket._impl

from dgd.core import tomltext
from dgd.core.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_QUERY,
    MAX_CLOSE_TIMEOUT_S,
    UNIT_STOP_TIMEOUT_S,
    ApiKey,
    AudioConfig,
    AuthMode,
    Config,
    ConfigError,
    DeepgramConfig,
    GateConfig,
    LogConfig,
    LogLevel,
    OutputConfig,
    StreamConfig,
    dump,
    loads,
    parse,
)
from dgd.core.gate import GateMode
from dgd.daemon.configfile import check_token_command, load, load_api_key

REPO: Path = Path(__file__).resolve().parent.parent
D: Config = Config()
SECRET: str = "dg-secret-0123456789abcdef"


def problems(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        loads(text)
    return info.value.problems


# ---------------------------------------------------------------- defaults and good input


def test_defaults() -> None:
    cfg = parse({})
    assert cfg == Config()
    assert cfg.deepgram == DeepgramConfig(
        url="wss://api.deepgram.com/v1/listen",
        api_key_file="",
        query=(
            ("model", "nova-3"),
            ("language", "en-US"),
            ("smart_format", "true"),
            ("interim_results", "false"),
        ),
    )
    assert cfg.audio == AudioConfig(device="default", rate=16000, channels=1, period_ms=20)
    assert cfg.gate == GateConfig(
        mode=GateMode.ENERGY, threshold_dbfs=None, preroll_ms=300, hangover_ms=1500
    )
    assert cfg.stream == StreamConfig(
        frame_ms=100,
        keepalive_interval_s=4.0,
        replay_buffer_s=120.0,
        close_timeout_s=5.0,
        connect_timeout_s=10.0,
        ping_interval_s=5.0,
        ping_timeout_s=10.0,
        backoff_initial_s=1.0,
        backoff_max_s=60.0,
        rate_limited_backoff_s=30.0,
        rejected_retry_s=300.0,
    )
    assert cfg.output == OutputConfig(journald=True, jsonl="", interim=False, stats_interval_s=60.0)
    assert cfg.log == LogConfig(level=LogLevel.INFO)
    assert DEFAULT_CONFIG_PATH == "/etc/dgd.toml"


GOOD: list[tuple[str, Config]] = [
    ("", D),
    ("[deepgram]\n[audio]\n[gate]\n[stream]\n[output]\n[log]\n", D),
    (
        '[deepgram]\nurl = "ws://127.0.0.1:8765/v1/listen"\napi_key_file = "/etc/dgd/api-key"\n',
        replace(
            D,
            deepgram=replace(
                D.deepgram, url="ws://127.0.0.1:8765/v1/listen", api_key_file="/etc/dgd/api-key"
            ),
        ),
    ),
    (
        '[audio]\ndevice = "plughw:CARD=Device,DEV=0"\nrate = 44100\nchannels = 2\nperiod_ms = 10\n'
        "[stream]\nframe_ms = 50\n",
        replace(
            D,
            audio=AudioConfig(
                device="plughw:CARD=Device,DEV=0", rate=44100, channels=2, period_ms=10
            ),
            stream=replace(D.stream, frame_ms=50),
        ),
    ),
    (
        '[gate]\nmode = "shadow"\nthreshold_dbfs = -45\npreroll_ms = 250\nhangover_ms = 0\n',
        replace(
            D,
            gate=GateConfig(
                mode=GateMode.SHADOW, threshold_dbfs=-45.0, preroll_ms=250, hangover_ms=0
            ),
        ),
    ),
    (
        '[gate]\nmode = "off"\nthreshold_dbfs = "auto"\n',
        replace(D, gate=replace(D.gate, mode=GateMode.OFF)),
    ),
    (
        # Seconds accept integers and floats alike; integers become floats.
        "[stream]\nkeepalive_interval_s = 9\nreplay_buffer_s = 0\nclose_timeout_s = 0.5\n"
        "connect_timeout_s = 120\nping_interval_s = 1\nping_timeout_s = 60\n"
        "backoff_initial_s = 2.5\nbackoff_max_s = 2.5\nrate_limited_backoff_s = 3600\n"
        "rejected_retry_s = 10\n",
        replace(
            D,
            stream=StreamConfig(
                frame_ms=100,
                keepalive_interval_s=9.0,
                replay_buffer_s=0.0,
                close_timeout_s=0.5,
                connect_timeout_s=120.0,
                ping_interval_s=1.0,
                ping_timeout_s=60.0,
                backoff_initial_s=2.5,
                backoff_max_s=2.5,
                rate_limited_backoff_s=3600.0,
                rejected_retry_s=10.0,
            ),
        ),
    ),
    (
        '[output]\njournald = false\njsonl = "/var/lib/dgd/transcripts.jsonl"\ninterim = true\n'
        'stats_interval_s = 0\n[log]\nlevel = "debug"\n',
        replace(
            D,
            output=OutputConfig(
                journald=False,
                jsonl="/var/lib/dgd/transcripts.jsonl",
                interim=True,
                stats_interval_s=0.0,
            ),
            log=LogConfig(level=LogLevel.DEBUG),
        ),
    ),
    (
        '[deepgram]\nregion = "eu"\n',
        replace(
            D,
            deepgram=replace(D.deepgram, url="wss://api.eu.deepgram.com/v1/listen", region="eu"),
        ),
    ),
    (
        # The region's own URL written out as well is not a conflict (dump writes both).
        '[deepgram]\nregion = "global"\nurl = "wss://api.deepgram.com/v1/listen"\n',
        replace(D, deepgram=replace(D.deepgram, region="global")),
    ),
    (
        '[deepgram]\nauth = "command"\ntoken_command = "/usr/local/bin/dg-token"\n',
        replace(
            D,
            deepgram=replace(
                D.deepgram, auth=AuthMode.COMMAND, token_command=("/usr/local/bin/dg-token",)
            ),
        ),
    ),
    (
        '[deepgram]\nauth = "grant"\ngrant_ttl_s = 3600\nca_file = "/etc/dgd/ca.pem"\n'
        'proxy = "http://proxy.lan:3128"\nproxy_credentials_file = "/etc/dgd/proxy"\n',
        replace(
            D,
            deepgram=replace(
                D.deepgram,
                auth=AuthMode.GRANT,
                grant_ttl_s=3600,
                ca_file="/etc/dgd/ca.pem",
                proxy="http://proxy.lan:3128",
                proxy_credentials_file="/etc/dgd/proxy",
            ),
        ),
    ),
    (
        '[deepgram]\nproxy = "direct"\nauth = "none"\n',
        replace(D, deepgram=replace(D.deepgram, proxy="direct", auth=AuthMode.NONE)),
    ),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_good_config(text: str, expected: Config) -> None:
    assert loads(text) == expected


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("", GateMode.ENERGY),
        ('[gate]\nmode = "off"\n', GateMode.OFF),
        ('[gate]\nmode = "energy"\n', GateMode.ENERGY),
        ('[gate]\nmode = "shadow"\n', GateMode.SHADOW),
    ],
)
def test_gate_mode_is_the_enum_member(text: str, mode: GateMode) -> None:
    assert loads(text).gate.mode is mode


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("", LogLevel.INFO),
        ('[log]\nlevel = "debug"\n', LogLevel.DEBUG),
        ('[log]\nlevel = "info"\n', LogLevel.INFO),
        ('[log]\nlevel = "warning"\n', LogLevel.WARNING),
        ('[log]\nlevel = "error"\n', LogLevel.ERROR),
    ],
)
def test_log_level_is_the_enum_member(text: str, level: LogLevel) -> None:
    assert loads(text).log.level is level


# ---------------------------------------------------------------- query rendering

QUERY: list[tuple[str, tuple[tuple[str, str], ...]]] = [
    ("[deepgram]\n", DEFAULT_QUERY),
    # A user table replaces the defaults entirely; an empty one sends nothing of its own.
    ("[deepgram.query]\n", ()),
    ('[deepgram.query]\nmodel = "nova-2"\n', (("model", "nova-2"),)),
    (
        "[deepgram.query]\nsmart_format = true\ninterim_results = false\npunctuate = true\n",
        (("smart_format", "true"), ("interim_results", "false"), ("punctuate", "true")),
    ),
    (
        "[deepgram.query]\nendpointing = 300\nutterance_end_ms = 1000\nx = 0.5\ny = -2\n",
        (("endpointing", "300"), ("utterance_end_ms", "1000"), ("x", "0.5"), ("y", "-2")),
    ),
    (
        '[deepgram.query]\nmodel = "nova-3"\nkeyterm = ["dgd", "Raspberry Pi"]\ntag = "kitchen"\n',
        (
            ("model", "nova-3"),
            ("keyterm", "dgd"),
            ("keyterm", "Raspberry Pi"),
            ("tag", "kitchen"),
        ),
    ),
    (
        '[deepgram.query]\nmixed = [true, 1, 1.5, "s"]\nnone = []\n',
        (
            ("mixed", "true"),
            ("mixed", "1"),
            ("mixed", "1.5"),
            ("mixed", "s"),
        ),
    ),
    ('[deepgram.query]\n"odd key" = "v"\n', (("odd key", "v"),)),
]


@pytest.mark.parametrize(("text", "expected"), QUERY)
def test_query_rendering(text: str, expected: tuple[tuple[str, str], ...]) -> None:
    assert loads(text).deepgram.query == expected


# ---------------------------------------------------------------- bad input, exact messages

ANY_SCALAR: str = "must be a string, number, boolean or a list of those"
BAD: list[tuple[str, tuple[str, ...]]] = [
    ("[gate]\nhangover_ms = -5\n", ("gate.hangover_ms: must be >= 0 (got -5)",)),
    (
        "[gate]\nhangover = 3\n",
        ("gate.hangover: unknown key; did you mean gate.hangover_ms?",),
    ),
    (
        "[audio]\nframe_ms = 40\n",
        ("audio.frame_ms: unknown key; did you mean stream.frame_ms?",),
    ),
    ("rate = 16000\n", ("rate: unknown key; did you mean audio.rate?",)),
    ("[gaet]\n", ("gaet: unknown key; did you mean gate?",)),
    (
        "[zzz]\n",
        ("zzz: unknown key; valid tables: deepgram, audio, gate, stream, output, log",),
    ),
    (
        "[log]\nqqq = 1\n",
        ("log.qqq: unknown key; valid keys: level",),
    ),
    ("gate = 3\n", ("gate: must be a table ([gate]) (got 3)",)),
    ("[deepgram]\nquery = 3\n", ("deepgram.query: must be a table ([deepgram.query]) (got 3)",)),
    # Booleans are not numbers, numbers are not booleans, floats are not whole numbers.
    (
        "[audio]\nrate = true\n",
        ("audio.rate: must be a whole number between 8000 and 192000 (got true)",),
    ),
    (
        "[audio]\nperiod_ms = 20.0\n",
        ("audio.period_ms: must be a whole number between 5 and 200 (got 20.0)",),
    ),
    (
        '[audio]\nchannels = "1"\n',
        ('audio.channels: must be a whole number between 1 and 8 (got "1")',),
    ),
    (
        "[stream]\nclose_timeout_s = false\n",
        ("stream.close_timeout_s: must be a number between 0.5 and 15.0 (got false)",),
    ),
    ("[output]\njournald = 1\n", ("output.journald: must be true or false (got 1)",)),
    ('[output]\ninterim = "yes"\n', ('output.interim: must be true or false (got "yes")',)),
    ("[audio]\ndevice = 0\n", ("audio.device: must be a string (got 0)",)),
    (
        '[audio]\ndevice = ""\n',
        ('audio.device: must name an ALSA PCM; `dgd devices` lists them (got "")',),
    ),
    (
        "[gate]\nthreshold_dbfs = true\n",
        ('gate.threshold_dbfs: must be "auto" or a number between -100.0 and 0.0 (got true)',),
    ),
    (
        '[gate]\nthreshold_dbfs = "loud"\n',
        ('gate.threshold_dbfs: must be "auto" or a number between -100.0 and 0.0 (got "loud")',),
    ),
    (
        '[gate]\nmode = "vad"\n',
        ('gate.mode: must be one of "off", "energy", "shadow" (got "vad")',),
    ),
    (
        '[log]\nlevel = "INFO"\n',
        ('log.level: must be one of "debug", "info", "warning", "error" (got "INFO")',),
    ),
    ("[gate]\nmode = 1\n", ('gate.mode: must be one of "off", "energy", "shadow" (got 1)',)),
    (
        '[gate]\nmode = "Energy"\n',
        ('gate.mode: must be one of "off", "energy", "shadow" (got "Energy")',),
    ),
    (
        "[log]\nlevel = false\n",
        ('log.level: must be one of "debug", "info", "warning", "error" (got false)',),
    ),
    (
        '[log]\nlevel = "critical"\n',
        ('log.level: must be one of "debug", "info", "warning", "error" (got "critical")',),
    ),
    (
        "[stream]\nping_interval_s = nan\n",
        ("stream.ping_interval_s: must be >= 1.0 (got nan)",),
    ),
    (
        "[stream]\nkeepalive_interval_s = 10\n",
        (
            "stream.keepalive_interval_s: must be <= 9.0; Deepgram closes the stream after 10 s"
            " without data (got 10)",
        ),
    ),
    (
        "[stream]\nbackoff_initial_s = 10\nbackoff_max_s = 5\n",
        ("stream.backoff_max_s: must be >= stream.backoff_initial_s = 10.0 (got 5.0)",),
    ),
    # Whole frames per period: 44100 Hz needs multiples of 10 ms, 11025 Hz multiples of 40 ms.
    (
        "[audio]\nrate = 44100\nperiod_ms = 25\n",
        (
            "audio.period_ms: must be a multiple of 10 at audio.rate = 44100, so that each period"
            " holds a whole number of frames (got 25)",
        ),
    ),
    (
        "[audio]\nrate = 11025\nperiod_ms = 20\n",
        (
            "audio.period_ms: must be a multiple of 40 at audio.rate = 11025, so that each period"
            " holds a whole number of frames (got 20)",
        ),
    ),
    (
        "[stream]\nframe_ms = 90\n",
        ("stream.frame_ms: must be a multiple of audio.period_ms = 20 (got 90)",),
    ),
    (
        "[audio]\nperiod_ms = 50\n[stream]\nframe_ms = 40\n",
        ("stream.frame_ms: must be >= 50 (got 40)",),
    ),
    # A bad period must not cause a second, confusing complaint about frame_ms.
    (
        "[audio]\nperiod_ms = 3\n[stream]\nframe_ms = 10\n",
        ("audio.period_ms: must be >= 5 (got 3)",),
    ),
    (
        "[audio]\nperiod_ms = 3\n[stream]\nframe_ms = 90\n",
        ("audio.period_ms: must be >= 5 (got 3)",),
    ),
    (
        '[deepgram]\nurl = "https://api.deepgram.com/v1/listen"\n',
        (
            "deepgram.url: must be a ws:// or wss:// URL with a host; for https:// use wss://"
            ' (got "https://api.deepgram.com/v1/listen")',
        ),
    ),
    (
        '[deepgram]\nurl = "api.deepgram.com"\n',
        ('deepgram.url: must be a ws:// or wss:// URL with a host (got "api.deepgram.com")',),
    ),
    (
        '[deepgram]\nurl = "wss:///v1/listen"\n',
        ('deepgram.url: must be a ws:// or wss:// URL with a host (got "wss:///v1/listen")',),
    ),
    (
        '[deepgram]\nurl = "wss://h/v1/listen?model=nova-3"\n',
        (
            "deepgram.url: must not contain a query string; use [deepgram.query]"
            ' (got "wss://h/v1/listen?model=nova-3")',
        ),
    ),
    (
        f'[deepgram]\nurl = "https://user:{SECRET}@h/v1/listen"\n',
        ("deepgram.url: must not contain credentials; use deepgram.api_key_file",),
    ),
    (
        f'[deepgram]\napi_key_file = "{SECRET}"\n',
        (
            "deepgram.api_key_file: must be an absolute path to a file holding the API key,"
            " not the key (value not shown)",
        ),
    ),
    (
        '[output]\njsonl = "transcripts.jsonl"\n',
        (
            "output.jsonl: must be an absolute path to the JSON-lines transcript file, or empty"
            ' (got "transcripts.jsonl")',
        ),
    ),
    (
        '[deepgram.query]\nencoding = "linear16"\nSample_Rate = 16000\nchannels = 1\n',
        (
            'deepgram.query.encoding: set from [audio]; remove it (got "linear16")',
            "deepgram.query.Sample_Rate: set from [audio]; remove it (got 16000)",
            "deepgram.query.channels: set from [audio]; remove it (got 1)",
        ),
    ),
    (
        "[deepgram.query]\na = {b = 1}\nc = [[1]]\nd = inf\ne = 1979-05-27\n",
        (
            f"deepgram.query.a: {ANY_SCALAR} (got {{ b = 1 }})",
            "deepgram.query.c: list items must be strings, numbers or booleans (got [[1]])",
            f"deepgram.query.d: {ANY_SCALAR} (got inf)",
            f"deepgram.query.e: {ANY_SCALAR} (got 1979-05-27)",
        ),
    ),
    ('[deepgram.query]\n"" = 1\n', ("deepgram.query: parameter name must not be empty",)),
    (
        '[deepgram]\nregion = "eu-west"\n',
        (
            'deepgram.region: must be one of "global", "eu", "us", "in", "au", or empty'
            ' (got "eu-west")',
        ),
    ),
    (
        '[deepgram]\nregion = "us"\nurl = "ws://127.0.0.1:8765/v1/listen"\n',
        (
            "deepgram.region: sets the endpoint to wss://api.us.deepgram.com/v1/listen, but"
            ' deepgram.url says ws://127.0.0.1:8765/v1/listen; keep one (got "us")',
        ),
    ),
    (
        '[deepgram]\nauth = "token"\n',
        ('deepgram.auth: must be one of "key", "grant", "command", "none" (got "token")',),
    ),
    (
        '[deepgram]\nauth = "command"\n',
        (
            "deepgram.token_command: must name the program that prints a token when"
            ' deepgram.auth = "command"',
        ),
    ),
    (
        '[deepgram]\ntoken_command = ["dg-token", "-v"]\n',
        (
            "deepgram.token_command: the program must be an absolute path (no shell runs it,"
            ' and no PATH is searched) (got ["dg-token", "-v"])',
        ),
    ),
    (
        "[deepgram]\ntoken_command = [1]\ngrant_ttl_s = 0\n",
        (
            "deepgram.token_command: must be a list of strings: the program and its arguments"
            " (got [1])",
            "deepgram.grant_ttl_s: must be >= 1 (got 0)",
        ),
    ),
    (
        '[deepgram]\nca_file = "ca.pem"\nproxy_credentials_file = "proxy"\n',
        (
            "deepgram.ca_file: must be an absolute path to a PEM file of CA certificates, or"
            ' empty (got "ca.pem")',
            "deepgram.proxy_credentials_file: must be an absolute path to a file holding"
            ' user:password for the proxy, or empty (got "proxy")',
        ),
    ),
    (
        f'[deepgram]\nproxy = "http://user:{SECRET}@proxy:3128"\n',
        (
            "deepgram.proxy: must not contain credentials; put user:password in"
            " deepgram.proxy_credentials_file",
        ),
    ),
    (
        '[deepgram]\nproxy = "https://proxy:3128"\n',
        (
            'deepgram.proxy: must be "http://host:port" (dgd speaks HTTP CONNECT to the proxy),'
            ' "direct" or empty (use $https_proxy) (got "https://proxy:3128")',
        ),
    ),
    (
        '[deepgram]\nproxy = "http://proxy:0"\n',
        (
            "deepgram.proxy: the port must be a whole number between 1 and 65535, not 0"
            ' (got "http://proxy:0")',
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_config(text: str, expected: tuple[str, ...]) -> None:
    assert problems(text) == expected


# ---------------------------------------------------------------- what `dgd run` would fail on

URL_RULE_ASCII: str = (
    "deepgram.url: must be printable ASCII without spaces (percent-encode the path, write an"
    " international host name in its xn-- form)"
)
URL_IPV6_EXAMPLE: str = "e.g. ws://[::1]:8765/v1/listen"
URL_BRACKETS: str = (
    f"deepgram.url: unbalanced [ ]: an IPv6 address is written in brackets, {URL_IPV6_EXAMPLE}"
)
URL_HOST_NAME: str = (
    "is not a valid host name (letters, digits, - and _, in dot-separated labels of 1 to 63"
    " characters)"
)
PORT_RULE: str = "deepgram.url: the port must be a whole number between 1 and 65535, not"
#: Each URL here ended `dgd run` with a traceback at its first connection (trio-websocket's
#: urllib.parse, h11 or the resolver's IDNA step raised) while check-config passed it.
RUN_WOULD_FAIL: list[tuple[str, str]] = [
    ("ws://127.0.0.1:99999/v1/listen", f"{PORT_RULE} 99999"),
    ("ws://127.0.0.1:65536/v1/listen", f"{PORT_RULE} 65536"),
    ("ws://127.0.0.1:0/v1/listen", f"{PORT_RULE} 0"),
    ("ws://127.0.0.1:abc/v1/listen", f"{PORT_RULE} abc"),
    ("ws://127.0.0.1:-1/v1/listen", f"{PORT_RULE} -1"),
    ("ws://127.0.0.1:/v1/listen", f"{PORT_RULE} empty"),
    ("ws://[::1]:70000/v1/listen", f"{PORT_RULE} 70000"),
    ("ws://[::1/v1/listen", URL_BRACKETS),
    ("ws://::1]/v1/listen", URL_BRACKETS),
    ("ws://[::1]]/v1/listen", URL_BRACKETS),
    ("ws://[[::1]/v1/listen", URL_BRACKETS),
    (
        "ws://[zz]/v1/listen",
        f'deepgram.url: "zz" in [ ] is not an IPv6 address ({URL_IPV6_EXAMPLE})',
    ),
    (
        "ws://[127.0.0.1]/v1/listen",
        f'deepgram.url: "127.0.0.1" in [ ] is not an IPv6 address ({URL_IPV6_EXAMPLE})',
    ),
    ("ws://[::1]x/v1/listen", f"deepgram.url: only :port may follow ] ({URL_IPV6_EXAMPLE})"),
    (
        "ws://::1/v1/listen",
        f"deepgram.url: an IPv6 address must be written in brackets, {URL_IPV6_EXAMPLE}",
    ),
    ("ws://:8765/v1/listen", "deepgram.url: must be a ws:// or wss:// URL with a host"),
    ("ws://a..b/v1/listen", f'deepgram.url: "a..b" {URL_HOST_NAME}'),
    ("ws://%41/v1/listen", f'deepgram.url: "%41" {URL_HOST_NAME}'),
    (f"ws://{'a' * 64}.com/v1/listen", f'deepgram.url: "{"a" * 64}.com" {URL_HOST_NAME}'),
    ("ws://h/v1/a b", f"{URL_RULE_ASCII}; character 12 is U+0020"),
    ("ws://h/v1/listén", f'{URL_RULE_ASCII}; character 15 is "é" (U+00E9)'),
    ("ws://bücher.example/v1/listen", f'{URL_RULE_ASCII}; character 7 is "ü" (U+00FC)'),
    ("ws://h/v1/\u007f", f"{URL_RULE_ASCII}; character 11 is U+007F"),
]
#: And these are fine (the WebSocket client connects, or fails as a network error and retries).
RUN_WOULD_CONNECT: list[str] = [
    "wss://api.deepgram.com/v1/listen",
    "ws://127.0.0.1:1/v1/listen",
    "ws://127.0.0.1:65535/v1/listen",
    "ws://[::1]:8765/v1/listen",
    "ws://[::1]",
    "ws://[fe80::1%eth0]:8765/v1/listen",
    "ws://localhost./v1/listen",
    "wss://api.eu.deepgram.com",
    "ws://dgd_test-1.example:8765/v1/listen",
    f"ws://{'a' * 63}.com/v1/listen",
    "ws://h/v1/%7Elisten",
]


@pytest.mark.parametrize(("url", "expected"), RUN_WOULD_FAIL)
def test_url_that_run_would_fail_on(url: str, expected: str) -> None:
    text = f"[deepgram]\nurl = {tomltext.string(url)}\n"
    assert problems(text) == (f"{expected} (got {tomltext.string(url)})",)


@pytest.mark.parametrize("url", RUN_WOULD_CONNECT)
def test_url_that_run_would_use(url: str) -> None:
    assert parse({"deepgram": {"url": url}}).deepgram.url == url


def websocket_client_refuses(url: str) -> bool:
    """Whether the WebSocket stack would raise on ``url`` (not a network error): what
    trio-websocket does with it (urllib.parse), the resolver's IDNA step, h11's request line."""
    try:
        parts: tuple[object, ...] = trio_websocket._impl._url_to_host(url, None)
        host, target = parts[0], str(parts[2])
        if not isinstance(host, str):  # trio-websocket 0.9 (Debian 12) returns None, no error
            return True
        host.encode("idna")  # what socket.getaddrinfo does with a str host
        h11.Request(method="GET", target=target, headers=[("Host", "h")])
    except (ValueError, h11.LocalProtocolError):  # UnicodeError is a ValueError
        return True
    return False


#: Refused although the client would take them: a host or port that can never be reached
#: (a network error for ever), a port left out after ":", an international host name (dgd
#: wants its xn-- form, which is what check-config can show unambiguously).
STRICTER: frozenset[str] = frozenset(
    {
        "ws://%41/v1/listen",
        "ws://[::1]x/v1/listen",
        "ws://127.0.0.1:0/v1/listen",
        "ws://127.0.0.1:/v1/listen",
        "ws://bücher.example/v1/listen",
    }
)


@pytest.mark.parametrize("url", [url for url, _ in RUN_WOULD_FAIL if url not in STRICTER])
def test_the_urls_refused_do_break_the_websocket_client(url: str) -> None:
    assert websocket_client_refuses(url)


@pytest.mark.parametrize("url", RUN_WOULD_CONNECT)
def test_the_urls_accepted_pass_the_websocket_client(url: str) -> None:
    assert not websocket_client_refuses(url)


#: (audio.rate, audio.channels, stream.replay_buffer_s, the problem or None)
REPLAY_MEMORY: list[tuple[int, int, float, str | None]] = [
    (16000, 1, 120, None),
    (16000, 1, 2000, None),
    (8000, 1, 3600, None),  # 57.6 MB
    (48000, 2, 333, None),  # 63.9 MB
    (
        192000,
        8,
        3600,
        "stream.replay_buffer_s: would take 11059.2 MB of memory (audio.rate 192000 Hz x"
        " audio.channels 8 x 2 bytes x 3600 s); at most 64 MB is allowed, 20.8 s at this format"
        " (got 3600)",
    ),
    (
        48000,
        2,
        334,
        "stream.replay_buffer_s: would take 64.2 MB of memory (audio.rate 48000 Hz x"
        " audio.channels 2 x 2 bytes x 334 s); at most 64 MB is allowed, 333.3 s at this format"
        " (got 334)",
    ),
    (
        16000,
        1,
        3600,
        "stream.replay_buffer_s: would take 115.2 MB of memory (audio.rate 16000 Hz x"
        " audio.channels 1 x 2 bytes x 3600 s); at most 64 MB is allowed, 2000 s at this format"
        " (got 3600)",
    ),
]


@pytest.mark.parametrize(("rate", "channels", "replay_s", "problem"), REPLAY_MEMORY)
def test_replay_buffer_memory_bound(
    rate: int, channels: int, replay_s: float, problem: str | None
) -> None:
    data = {
        "audio": {"rate": rate, "channels": channels},
        "stream": {"replay_buffer_s": replay_s},
    }
    if problem is None:
        assert parse(data).stream.replay_buffer_s * rate * channels * 2 <= 64e6
    else:
        with pytest.raises(ConfigError) as info:
            parse(data)
        assert info.value.problems == (problem,)


def test_replay_buffer_memory_not_checked_against_a_bad_format() -> None:
    # A bad rate is reported once, not again as a memory problem computed from it.
    with pytest.raises(ConfigError) as info:
        parse({"audio": {"rate": 400000}, "stream": {"replay_buffer_s": 3000}})
    assert info.value.problems == ("audio.rate: must be <= 192000 (got 400000)",)


def test_all_problems_reported_at_once() -> None:
    text = (
        "rate = 1\n"
        "[audio]\nrate = 7999\nchannels = true\n"
        '[gate]\nmode = "on"\nhangover = 2\n'
        "[stream]\nframe_ms = 30\nkeepalive_interval_s = 0.25\n"
        '[output]\njsonl = "x"\n'
    )
    expected = (
        "audio.rate: must be >= 8000 (got 7999)",
        "audio.channels: must be a whole number between 1 and 8 (got true)",
        'gate.mode: must be one of "off", "energy", "shadow" (got "on")',
        "stream.frame_ms: must be a multiple of audio.period_ms = 20 (got 30)",
        "stream.keepalive_interval_s: must be >= 0.5; Deepgram closes the stream after 10 s"
        " without data (got 0.25)",
        "output.jsonl: must be an absolute path to the JSON-lines transcript file, or empty"
        ' (got "x")',
        "rate: unknown key; did you mean audio.rate?",
        "gate.hangover: unknown key; did you mean gate.hangover_ms?",
    )
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert info.value.problems == expected
    assert str(info.value) == "\n".join(expected)


# ---------------------------------------------------------------- range boundaries

BOUNDS: list[tuple[str, str, object, str | None]] = [
    # (table, key, value, expected problem or None if valid)
    ("audio", "rate", 8000, None),
    ("audio", "rate", 192000, None),
    ("audio", "rate", 7999, "audio.rate: must be >= 8000 (got 7999)"),
    ("audio", "rate", 192001, "audio.rate: must be <= 192000 (got 192001)"),
    ("audio", "channels", 1, None),
    ("audio", "channels", 8, None),
    ("audio", "channels", 0, "audio.channels: must be >= 1 (got 0)"),
    ("audio", "channels", 9, "audio.channels: must be <= 8 (got 9)"),
    ("audio", "period_ms", 5, None),
    ("audio", "period_ms", 4, "audio.period_ms: must be >= 5 (got 4)"),
    ("audio", "period_ms", 201, "audio.period_ms: must be <= 200 (got 201)"),
    ("gate", "threshold_dbfs", -100, None),
    ("gate", "threshold_dbfs", 0, None),
    ("gate", "threshold_dbfs", -100.5, "gate.threshold_dbfs: must be >= -100.0 (got -100.5)"),
    ("gate", "threshold_dbfs", 0.5, "gate.threshold_dbfs: must be <= 0.0 (got 0.5)"),
    ("gate", "preroll_ms", 0, None),
    ("gate", "preroll_ms", 5000, None),
    ("gate", "preroll_ms", 5001, "gate.preroll_ms: must be <= 5000 (got 5001)"),
    ("gate", "preroll_ms", 7, None),  # need not be a multiple of the period
    ("gate", "hangover_ms", 10000, None),
    ("gate", "hangover_ms", 10001, "gate.hangover_ms: must be <= 10000 (got 10001)"),
    ("stream", "frame_ms", 20, None),
    ("stream", "frame_ms", 1000, None),
    ("stream", "frame_ms", 1020, "stream.frame_ms: must be <= 1000 (got 1020)"),
    ("stream", "frame_ms", 0, "stream.frame_ms: must be >= 20 (got 0)"),
    ("stream", "keepalive_interval_s", 0.5, None),
    ("stream", "keepalive_interval_s", 9.0, None),
    (
        "stream",
        "keepalive_interval_s",
        9.01,
        "stream.keepalive_interval_s: must be <= 9.0; Deepgram closes the stream after 10 s"
        " without data (got 9.01)",
    ),
    ("stream", "replay_buffer_s", 0, None),
    ("stream", "replay_buffer_s", 2000, None),  # 64 MB at 16 kHz mono: the memory bound
    ("stream", "replay_buffer_s", -0.1, "stream.replay_buffer_s: must be >= 0.0 (got -0.1)"),
    ("stream", "replay_buffer_s", 3600.5, "stream.replay_buffer_s: must be <= 3600.0 (got 3600.5)"),
    (
        "stream",
        "replay_buffer_s",
        2000.1,
        "stream.replay_buffer_s: would take 64.1 MB of memory (audio.rate 16000 Hz x"
        " audio.channels 1 x 2 bytes x 2000.1 s); at most 64 MB is allowed, 2000 s at this format"
        " (got 2000.1)",
    ),
    ("stream", "close_timeout_s", 0.4, "stream.close_timeout_s: must be >= 0.5 (got 0.4)"),
    ("stream", "close_timeout_s", 0.5, None),
    ("stream", "close_timeout_s", 15, None),
    (
        "stream",
        "close_timeout_s",
        15.1,
        "stream.close_timeout_s: must be <= 15.0; the shipped unit stops dgd after"
        " TimeoutStopSec=20s, which must also cover releasing the device and exiting (got 15.1)",
    ),
    ("stream", "connect_timeout_s", 121, "stream.connect_timeout_s: must be <= 120.0 (got 121)"),
    ("stream", "ping_timeout_s", 0, "stream.ping_timeout_s: must be >= 1.0 (got 0)"),
    ("stream", "backoff_initial_s", 0.1, None),
    ("stream", "backoff_initial_s", 0.09, "stream.backoff_initial_s: must be >= 0.1 (got 0.09)"),
    ("stream", "backoff_max_s", 3601, "stream.backoff_max_s: must be <= 3600.0 (got 3601)"),
    ("stream", "rate_limited_backoff_s", 1, None),
    (
        "stream",
        "rate_limited_backoff_s",
        0.5,
        "stream.rate_limited_backoff_s: must be >= 1.0 (got 0.5)",
    ),
    ("stream", "rejected_retry_s", 10, None),
    ("stream", "rejected_retry_s", 86400, None),
    ("stream", "rejected_retry_s", 9.99, "stream.rejected_retry_s: must be >= 10.0 (got 9.99)"),
    (
        "stream",
        "rejected_retry_s",
        86401,
        "stream.rejected_retry_s: must be <= 86400.0 (got 86401)",
    ),
    ("output", "stats_interval_s", 0, None),
    ("output", "stats_interval_s", 86400, None),
    ("output", "stats_interval_s", -1, "output.stats_interval_s: must be >= 0.0 (got -1)"),
]


@pytest.mark.parametrize(("table", "key", "value", "problem"), BOUNDS)
def test_range_boundaries(table: str, key: str, value: object, problem: str | None) -> None:
    data = {table: {key: value}}
    if problem is None:
        cfg = parse(data)
        assert getattr(getattr(cfg, table), key) == value
    else:
        with pytest.raises(ConfigError) as info:
            parse(data)
        assert info.value.problems == (problem,)


# ---------------------------------------------------------------- TOML syntax and files

SYNTAX: list[tuple[str, str]] = [
    (
        '[gate]\nmode = "energy\n',
        "/etc/dgd.toml: line 2, column 15: TOML syntax error: Illegal character '\\n'",
    ),
    (
        "[gate]\nmode = energy\n",
        "/etc/dgd.toml: line 2, column 8: TOML syntax error: Invalid value",
    ),
    (
        "a = 1\na = 2\n",
        "/etc/dgd.toml: line 2, column 6: TOML syntax error: Cannot overwrite a value",
    ),
    # tomllib reports no position when input ends early; the last line is named instead.
    (
        'a = 1\nmode = "on',
        "/etc/dgd.toml: line 2 (end of file): TOML syntax error: Unterminated string",
    ),
]


@pytest.mark.parametrize(("text", "expected"), SYNTAX)
def test_toml_syntax_error(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text, source="/etc/dgd.toml")
    assert info.value.problems == (expected,)
    assert info.value.source == "/etc/dgd.toml"


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "dgd.toml"
    path.write_text('[audio]\ndevice = "hw:1"\n')
    assert load(path) == replace(D, audio=replace(D.audio, device="hw:1"))
    assert load(str(path)) == load(path)


def test_load_invalid_file_names_source(tmp_path: Path) -> None:
    path = tmp_path / "dgd.toml"
    path.write_text("[gate]\nhangover_ms = -5\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == ("gate.hangover_ms: must be >= 0 (got -5)",)
    assert info.value.source == str(path)


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == (
        f"{path}: config file not found; create it (etc/dgd.toml in the source lists every key"
        " with its default) or pass another with -c PATH",
    )


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert info.value.problems == (f"{tmp_path}: is a directory, not a config file",)


def test_load_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "dgd.toml"
    path.write_bytes(b'[audio]\ndevice = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == (f"{path}: not valid UTF-8 (byte 18); TOML files must be UTF-8",)


# ---------------------------------------------------------------- dump()

DEFAULTS_TEXT: str = """\
# dgd configuration (every key; docs/CONFIG.md describes them)

[deepgram]
url = "wss://api.deepgram.com/v1/listen"
region = ""
api_key_file = ""
auth = "key"
token_command = []
grant_ttl_s = 30
ca_file = ""
proxy = ""
proxy_credentials_file = ""

[deepgram.query]
model = "nova-3"
language = "en-US"
smart_format = true
interim_results = false

[audio]
device = "default"
rate = 16000
channels = 1
period_ms = 20

[gate]
mode = "energy"
threshold_dbfs = "auto"
preroll_ms = 300
hangover_ms = 1500

[stream]
frame_ms = 100
keepalive_interval_s = 4.0
replay_buffer_s = 120.0
close_timeout_s = 5.0
connect_timeout_s = 10.0
ping_interval_s = 5.0
ping_timeout_s = 10.0
backoff_initial_s = 1.0
backoff_max_s = 60.0
rate_limited_backoff_s = 30.0
rejected_retry_s = 300.0

[output]
journald = true
jsonl = ""
interim = false
stats_interval_s = 60.0

[log]
level = "info"
"""

#: Every kind of value a config holds: repeats, numbers and booleans as strings, a secret,
#: quoted keys, paths, non-ASCII text and characters TOML must escape.
BUSY: Config = Config(
    deepgram=DeepgramConfig(
        url="ws://127.0.0.1:8765/v1/listen",
        api_key_file="/etc/dgd/clé api",
        auth=AuthMode.COMMAND,
        token_command=("/usr/local/bin/dg token", "--ttl", "60"),
        grant_ttl_s=3600,
        ca_file="/etc/ssl/private ca.pem",
        proxy="http://[::1]:3128",
        proxy_credentials_file="/etc/dgd/proxy",
        query=(
            ("model", "nova-2"),
            ("keyterm", "dgd"),
            ("keyterm", "Raspberry Pi"),
            ("endpointing", "300"),
            ("tag", "007"),
            ("x", "-0.5"),
            ("punctuate", "true"),
            ("token", SECRET),
            ("odd key", "v"),
            ("ключ", "значение"),
        ),
    ),
    audio=AudioConfig(device='mic "1" \\ \tünï\n\x01\x7f 🎤', rate=44100, channels=2, period_ms=10),
    gate=GateConfig(mode=GateMode.SHADOW, threshold_dbfs=-45.5, preroll_ms=0, hangover_ms=10000),
    stream=replace(D.stream, frame_ms=50, replay_buffer_s=0.0, backoff_initial_s=0.25),
    output=OutputConfig(journald=False, jsonl="/var/lib/dgd/t 1.jsonl", interim=True),
    log=LogConfig(level=LogLevel.DEBUG),
)

BUSY_TEXT: str = f"""\
# dgd configuration (every key; docs/CONFIG.md describes them)

[deepgram]
url = "ws://127.0.0.1:8765/v1/listen"
region = ""
api_key_file = "/etc/dgd/clé api"
auth = "command"
token_command = ["/usr/local/bin/dg token", "--ttl", "60"]
grant_ttl_s = 3600
ca_file = "/etc/ssl/private ca.pem"
proxy = "http://[::1]:3128"
proxy_credentials_file = "/etc/dgd/proxy"

[deepgram.query]
model = "nova-2"
keyterm = ["dgd", "Raspberry Pi"]
endpointing = 300
tag = "007"
x = "-0.5"
punctuate = true
token = "{SECRET}"
"odd key" = "v"
"ключ" = "значение"

[audio]
device = "mic \\"1\\" \\\\ \tünï\\n\\u0001\\u007F 🎤"
rate = 44100
channels = 2
period_ms = 10

[gate]
mode = "shadow"
threshold_dbfs = -45.5
preroll_ms = 0
hangover_ms = 10000

[stream]
frame_ms = 50
keepalive_interval_s = 4.0
replay_buffer_s = 0.0
close_timeout_s = 5.0
connect_timeout_s = 10.0
ping_interval_s = 5.0
ping_timeout_s = 10.0
backoff_initial_s = 0.25
backoff_max_s = 60.0
rate_limited_backoff_s = 30.0
rejected_retry_s = 300.0

[output]
journald = false
jsonl = "/var/lib/dgd/t 1.jsonl"
interim = true
stats_interval_s = 60.0

[log]
level = "debug"
"""


def test_dump_defaults_exactly() -> None:
    assert dump(D) == DEFAULTS_TEXT


def test_dump_every_kind_of_value_exactly() -> None:
    assert dump(BUSY) == BUSY_TEXT


def test_dump_redacted_differs_only_in_the_header_and_the_secret() -> None:
    plain, redacted = dump(BUSY).splitlines(), dump(BUSY, redact_secrets=True).splitlines()
    changed = [(a, b) for a, b in zip(plain, redacted, strict=True) if a != b]
    assert changed == [
        (
            "# dgd configuration (every key; docs/CONFIG.md describes them)",
            "# dgd effective configuration (defaults filled in; secrets redacted)",
        ),
        (f'token = "{SECRET}"', 'token = "<redacted>"'),
    ]


ROUND_TRIP: list[Config] = [
    D,
    BUSY,
    *(expected for _, expected in GOOD),
    *(replace(D, deepgram=replace(D.deepgram, query=query)) for _, query in QUERY),
    *(replace(D, gate=replace(D.gate, mode=mode)) for mode in GateMode),
    *(replace(D, log=LogConfig(level=level)) for level in LogLevel),
    *(
        replace(D, gate=replace(D.gate, threshold_dbfs=threshold))
        for threshold in (None, -100.0, 0.0, -50.0, -33.3, -1e-05)
    ),
    replace(D, deepgram=replace(D.deepgram, query=(("a.b c", "x=1&y=2"), ("q", '"\\\n')))),
    replace(
        D, deepgram=replace(D.deepgram, query=(("n", "0"), ("n", "-0"), ("n", "+1"), ("n", "1e3")))
    ),
    replace(D, deepgram=replace(D.deepgram, query=(("b", "True"), ("b", "false"), ("b", "")))),
    replace(D, stream=replace(D.stream, keepalive_interval_s=9, close_timeout_s=0.5)),
    replace(D, output=replace(D.output, stats_interval_s=86400.0, jsonl="/tmp/ü/t.jsonl")),
]


@pytest.mark.parametrize("cfg", ROUND_TRIP)
def test_dump_round_trips(cfg: Config) -> None:
    again = parse(tomllib.loads(dump(cfg)))
    assert again == cfg
    assert again.gate.mode is cfg.gate.mode
    assert again.log.level is cfg.log.level


def test_dump_refuses_a_query_no_file_can_express() -> None:
    apart = replace(D, deepgram=replace(D.deepgram, query=(("a", "1"), ("b", "2"), ("a", "3"))))
    with pytest.raises(ValueError, match="a: its repeats are apart"):
        dump(apart)


# ---------------------------------------------------------------- dump(redact_secrets=True)


@pytest.mark.parametrize("text", [text for text, _ in GOOD] + [text for text, _ in QUERY])
def test_redacted_round_trips(text: str) -> None:
    cfg = loads(text)
    assert parse(tomllib.loads(dump(cfg, redact_secrets=True))) == cfg


def test_redacted_lists_every_key_with_defaults() -> None:
    data = tomllib.loads(dump(D, redact_secrets=True))
    assert data == {
        "deepgram": {
            "url": "wss://api.deepgram.com/v1/listen",
            "region": "",
            "api_key_file": "",
            "auth": "key",
            "token_command": [],
            "grant_ttl_s": 30,
            "ca_file": "",
            "proxy": "",
            "proxy_credentials_file": "",
            "query": {
                "model": "nova-3",
                "language": "en-US",
                "smart_format": True,
                "interim_results": False,
            },
        },
        "audio": {"device": "default", "rate": 16000, "channels": 1, "period_ms": 20},
        "gate": {
            "mode": "energy",
            "threshold_dbfs": "auto",
            "preroll_ms": 300,
            "hangover_ms": 1500,
        },
        "stream": {
            "frame_ms": 100,
            "keepalive_interval_s": 4.0,
            "replay_buffer_s": 120.0,
            "close_timeout_s": 5.0,
            "connect_timeout_s": 10.0,
            "ping_interval_s": 5.0,
            "ping_timeout_s": 10.0,
            "backoff_initial_s": 1.0,
            "backoff_max_s": 60.0,
            "rate_limited_backoff_s": 30.0,
            "rejected_retry_s": 300.0,
        },
        "output": {"journald": True, "jsonl": "", "interim": False, "stats_interval_s": 60.0},
        "log": {"level": "info"},
    }


def test_redacted_escapes_strings() -> None:
    odd = 'q"uo\\te\ttab\nnl\x01\x7f é'
    cfg = replace(
        D,
        audio=replace(D.audio, device=odd),
        deepgram=replace(D.deepgram, query=(("a.b c", odd), ("n", "007"), ("m", "-3"))),
    )
    assert parse(tomllib.loads(dump(cfg, redact_secrets=True))) == cfg


def test_redacted_hides_secret_query_values_and_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(SECRET + "\n")
    key_file.chmod(0o600)
    cfg = loads(
        f'[deepgram]\napi_key_file = "{key_file}"\n'
        f'[deepgram.query]\nmodel = "nova-3"\ntoken = "{SECRET}"\n'
    )
    key, _ = load_api_key(cfg.deepgram, {})
    assert key.value == SECRET
    text = dump(cfg, redact_secrets=True)
    assert SECRET not in text
    assert 'token = "<redacted>"' in text
    assert tomllib.loads(text)["deepgram"]["query"] == {"model": "nova-3", "token": "<redacted>"}


# ---------------------------------------------------------------- API key


def key_file(tmp_path: Path, content: str, mode: int = 0o600, name: str = "api-key") -> Path:
    path = tmp_path / name
    path.write_text(content)
    path.chmod(mode)
    return path


def dg(api_key_file: str = "") -> DeepgramConfig:
    return DeepgramConfig(api_key_file=api_key_file)


def test_api_key_file_wins_over_credential_and_environment(tmp_path: Path) -> None:
    path = key_file(tmp_path, "  from-file \n")
    creds = tmp_path / "creds"
    creds.mkdir()
    key_file(creds, "from-credential", name="deepgram-api-key")
    environ = {"CREDENTIALS_DIRECTORY": str(creds), "DEEPGRAM_API_KEY": "from-env"}
    assert load_api_key(dg(str(path)), environ) == (ApiKey("from-file", f"file {path}"), [])


def test_api_key_credential_wins_over_environment(tmp_path: Path) -> None:
    key_file(tmp_path, "from-credential\n", mode=0o644, name="deepgram-api-key")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path), "DEEPGRAM_API_KEY": "from-env"}
    assert load_api_key(dg(), environ) == (
        ApiKey("from-credential", "credential deepgram-api-key"),
        [],
    )


@pytest.mark.parametrize(
    "environ",
    [
        {"DEEPGRAM_API_KEY": " from-env\n"},
        # A credentials directory without our credential falls through to the environment.
        {"CREDENTIALS_DIRECTORY": "/nonexistent-dgd-creds", "DEEPGRAM_API_KEY": "from-env"},
    ],
)
def test_api_key_from_environment(environ: dict[str, str]) -> None:
    assert load_api_key(dg(), environ) == (ApiKey("from-env", "environment DEEPGRAM_API_KEY"), [])


@pytest.mark.parametrize(
    ("mode", "warns"), [(0o600, False), (0o400, False), (0o640, True), (0o604, True)]
)
def test_api_key_file_permission_warning(tmp_path: Path, mode: int, warns: bool) -> None:
    path = key_file(tmp_path, SECRET, mode=mode)
    key, warnings = load_api_key(dg(str(path)), {})
    assert key.value == SECRET
    expected = (
        [f"deepgram.api_key_file: {path} is readable by group or others; run: chmod 600 {path}"]
        if warns
        else []
    )
    assert warnings == expected


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"DEEPGRAM_API_KEY": "  \n"},
    ],
)
def test_api_key_missing_everywhere(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_api_key(dg(), environ)
    assert info.value.problems == (
        "deepgram.api_key_file: no Deepgram API key found (deepgram.api_key_file is empty,"
        " $CREDENTIALS_DIRECTORY is not set, $DEEPGRAM_API_KEY is not set or empty); put the key"
        " in a file readable only by dgd (chmod 600) and either set deepgram.api_key_file to its"
        " path or add LoadCredential=deepgram-api-key:/etc/dgd/api-key to the unit; or set"
        " $DEEPGRAM_API_KEY",
    )


def test_api_key_missing_with_credentials_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_api_key(dg(), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "$CREDENTIALS_DIRECTORY/deepgram-api-key does not exist" in str(info.value)


def api_key_error(tmp_path: Path, content: bytes | None) -> str:
    path = tmp_path / "api-key"
    if content is not None:
        path.write_bytes(content)
        path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_api_key(dg(str(path)), {"DEEPGRAM_API_KEY": "never-used"})
    (problem,) = info.value.problems
    return problem.replace(str(path), "PATH")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "deepgram.api_key_file: PATH does not exist; create it holding only the key"),
        (b" \n\n", "deepgram.api_key_file: PATH is empty; put the Deepgram API key in it"),
        (
            SECRET.encode() + b"\nsecond line\n",
            "deepgram.api_key_file: PATH holds more than one word; it must hold only the API key",
        ),
        (
            b"\xff\xfe" + SECRET.encode(),
            "deepgram.api_key_file: PATH is not text; it must hold only the API key",
        ),
    ],
)
def test_api_key_file_problems(tmp_path: Path, content: bytes | None, expected: str) -> None:
    # An explicitly configured key file must work: no silent fallback to the environment.
    problem = api_key_error(tmp_path, content)
    assert problem == expected
    assert SECRET not in problem


def test_api_key_empty_credential(tmp_path: Path) -> None:
    path = key_file(tmp_path, "\n", name="deepgram-api-key")
    with pytest.raises(ConfigError) as info:
        load_api_key(dg(), {"CREDENTIALS_DIRECTORY": str(tmp_path), "DEEPGRAM_API_KEY": "x"})
    assert info.value.problems == (
        f"credential deepgram-api-key: {path} is empty; put the Deepgram API key in it"
        " (the shipped unit loads it from /etc/dgd/api-key: `sudoedit /etc/dgd/api-key`,"
        " then `systemctl restart dgd`)",
    )


def test_api_key_environment_with_spaces() -> None:
    with pytest.raises(ConfigError) as info:
        load_api_key(dg(), {"DEEPGRAM_API_KEY": f"{SECRET} {SECRET}"})
    assert info.value.problems == (
        "$DEEPGRAM_API_KEY: holds more than one word; set it to the key only",
    )


KEY_CHARACTER_ADVICE: str = (
    "which an HTTP header cannot carry; copy the key again (Deepgram keys are letters and"
    " digits), e.g. from the Deepgram console"
)
#: (the key as found, the problem after "<source>: "): what the Authorization header
#: (latin-1, no control characters) cannot carry; wsclient would raise at the first connect.
BAD_KEY_CHARACTERS: list[tuple[str, str]] = [
    (
        "dg0123\u2019456",
        f'character 7 of the key is "\u2019" (U+2019), RIGHT SINGLE QUOTATION MARK,'
        f" {KEY_CHARACTER_ADVICE}",
    ),
    (
        "\u201cdg0123456",
        f'character 1 of the key is "\u201c" (U+201C), LEFT DOUBLE QUOTATION MARK,'
        f" {KEY_CHARACTER_ADVICE}",
    ),
    (
        "dg0123\u2013456",
        f'character 7 of the key is "\u2013" (U+2013), EN DASH, {KEY_CHARACTER_ADVICE}',
    ),
    ("dg\x01abc", f"character 3 of the key is U+0001, a control character, {KEY_CHARACTER_ADVICE}"),
    ("dgabc\x7f", f"character 6 of the key is U+007F, a control character, {KEY_CHARACTER_ADVICE}"),
    ("dg\u200babc", f"character 3 of the key is U+200B, ZERO WIDTH SPACE, {KEY_CHARACTER_ADVICE}"),
    ("dg\xadabc", f"character 3 of the key is U+00AD, SOFT HYPHEN, {KEY_CHARACTER_ADVICE}"),
]
#: Latin-1 printable characters do pass (the header carries them; Deepgram then says 401).
GOOD_KEY_CHARACTERS: list[str] = [SECRET, "dg-\xe9\xff~!", "a"]


@pytest.mark.parametrize(("key", "problem"), BAD_KEY_CHARACTERS)
@pytest.mark.parametrize("source", ["file", "credential", "environment"])
def test_api_key_characters_a_header_cannot_carry(
    tmp_path: Path, source: str, key: str, problem: str
) -> None:
    if source == "file":
        path = key_file(tmp_path, key + "\n")
        cfg, environ = dg(str(path)), {}
        where = f"deepgram.api_key_file: {path}"
        suffix = ""
    elif source == "credential":
        path = key_file(tmp_path, key + "\n", name="deepgram-api-key")
        cfg, environ = dg(), {"CREDENTIALS_DIRECTORY": str(tmp_path)}
        where = f"credential deepgram-api-key: {path}"
        suffix = (
            " (the shipped unit loads it from /etc/dgd/api-key: `sudoedit /etc/dgd/api-key`,"
            " then `systemctl restart dgd`)"
        )
    else:
        cfg, environ, where, suffix = dg(), {"DEEPGRAM_API_KEY": key}, "$DEEPGRAM_API_KEY", ""
    with pytest.raises(ConfigError) as info:
        load_api_key(cfg, environ)
    assert info.value.problems == (f"{where}: {problem}{suffix}",)


@pytest.mark.parametrize("key", GOOD_KEY_CHARACTERS)
def test_api_key_characters_a_header_can_carry(key: str) -> None:
    api_key, _ = load_api_key(dg(), {"DEEPGRAM_API_KEY": key})
    assert api_key.value == key
    header = ("Token " + key).encode("latin-1")
    h11.Request(method="GET", target="/", headers=[(b"Host", b"h"), (b"Authorization", header)])


def test_api_key_character_problem_never_shows_the_key(tmp_path: Path) -> None:
    path = key_file(tmp_path, SECRET + "\u2019\n")
    with pytest.raises(ConfigError) as info:
        load_api_key(dg(str(path)), {})
    assert SECRET not in str(info.value)
    assert SECRET[:8] not in str(info.value)


def test_close_timeout_bound_fits_the_shipped_units_stop_timeout() -> None:
    unit = (REPO / "systemd" / "dgd.service").read_text()
    [stop] = re.findall(r"^TimeoutStopSec=(\d+)s$", unit, re.MULTILINE)
    assert float(stop) == UNIT_STOP_TIMEOUT_S
    # The 5 s left over cover stopping capture, releasing the device and the process exit.
    assert MAX_CLOSE_TIMEOUT_S + 5 <= UNIT_STOP_TIMEOUT_S
    parse({"stream": {"close_timeout_s": MAX_CLOSE_TIMEOUT_S}})
    with pytest.raises(ConfigError):
        parse({"stream": {"close_timeout_s": MAX_CLOSE_TIMEOUT_S + 0.1}})


def test_api_key_never_shown() -> None:
    key = ApiKey(SECRET, "file /etc/dgd/api-key")
    assert repr(key) == "ApiKey(<redacted>, from file /etc/dgd/api-key)"
    assert str(key) == repr(key)
    assert SECRET not in f"{key} {key!r} {[key]} {(key, 1)!r}"


# ---------------------------------------------------------------- the shipped example


def test_shipped_example_parses_to_defaults() -> None:
    assert load(REPO / "etc" / "dgd.toml") == parse({})


def test_shipped_example_lists_every_key() -> None:
    with open(REPO / "etc" / "dgd.toml", "rb") as file:
        shipped = tomllib.load(file)
    assert shipped == tomllib.loads(dump(D, redact_secrets=True))


def test_shipped_example_has_one_comment_per_key() -> None:
    lines = (REPO / "etc" / "dgd.toml").read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"etc/dgd.toml line {i + 1} has no comment"


def test_config_docs_mention_every_key() -> None:
    doc = (REPO / "docs" / "CONFIG.md").read_text()
    for section, keys in tomllib.loads(dump(D, redact_secrets=True)).items():
        for key, value in keys.items():
            if not isinstance(value, dict):
                assert f"`{key}`" in doc, f"docs/CONFIG.md lacks {section}.{key}"
            else:
                assert f"`[{section}.{key}]`" in doc
                for sub in value:
                    assert f"`{sub}`" in doc, f"docs/CONFIG.md lacks {section}.{key}.{sub}"


def test_module_is_pure() -> None:
    source = (REPO / "dgd" / "core" / "config.py").read_text()
    for banned in ("import trio", "import socket", "import alsaaudio", "time.time", "monotonic"):
        assert banned not in source
    assert os.path.basename(DEFAULT_CONFIG_PATH) == "dgd.toml"


SELF_HOSTED = "ws://127.0.0.1:8765/v1/listen"
NO_KEY = ApiKey("", "none (a self-hosted server: connecting without an Authorization header)")


@pytest.mark.parametrize(
    ("auth", "url", "key_file_content", "expected"),
    [
        # No key read at all for these two modes, even where one would be found.
        (
            AuthMode.COMMAND,
            D.deepgram.url,
            b"k",
            ApiKey("", 'none needed (deepgram.auth = "command")'),
        ),
        (AuthMode.NONE, D.deepgram.url, b"k", ApiKey("", 'none needed (deepgram.auth = "none")')),
        # A self-hosted server: no key, or an empty file, means no header.
        (AuthMode.KEY, SELF_HOSTED, None, NO_KEY),
        (AuthMode.KEY, SELF_HOSTED, b"\n", NO_KEY),
        (AuthMode.KEY, SELF_HOSTED, b"k\n", ApiKey("k", "credential deepgram-api-key")),
        # Deepgram's own hosts, any region, always need one (the grant needs one everywhere).
        (AuthMode.KEY, "wss://api.eu.deepgram.com/v1/listen", None, None),
        (AuthMode.KEY, "wss://deepgram.com.example/v1/listen", None, NO_KEY),
        (AuthMode.GRANT, SELF_HOSTED, None, None),
        (AuthMode.KEY, D.deepgram.url, b"", None),
    ],
)
def test_api_key_needed_by_auth_mode_and_host(
    tmp_path: Path,
    auth: AuthMode,
    url: str,
    key_file_content: bytes | None,
    expected: ApiKey | None,
) -> None:
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    if key_file_content is not None:
        (tmp_path / "deepgram-api-key").write_bytes(key_file_content)
    cfg = replace(D.deepgram, auth=auth, url=url)
    if expected is None:
        with pytest.raises(ConfigError, match="deepgram-api-key"):
            load_api_key(cfg, environ)
    else:
        assert load_api_key(cfg, environ) == (expected, [])


def test_token_command_must_be_an_executable_file(tmp_path: Path) -> None:
    script = tmp_path / "dg-token"
    command = replace(D.deepgram, auth=AuthMode.COMMAND, token_command=(str(script), "--x"))
    with pytest.raises(ConfigError, match=f"^deepgram.token_command: {script} does not exist$"):
        check_token_command(command)
    script.write_text("#!/bin/sh\necho token\n")
    script.chmod(0o644)
    with pytest.raises(ConfigError, match="is not executable by this user"):
        check_token_command(command)
    script.chmod(0o755)
    check_token_command(command)  # no error
    with pytest.raises(ConfigError, match=f"^deepgram.token_command: {tmp_path} is not a file$"):
        check_token_command(replace(command, token_command=(str(tmp_path),)))
    # Only auth = "command" runs it.
    check_token_command(replace(D.deepgram, token_command=(str(tmp_path / "absent"),)))
