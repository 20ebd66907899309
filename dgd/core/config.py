"""Configuration: ``/etc/dgd.toml`` validated into frozen dataclasses, and written back.

``parse()`` checks every key, type, range and cross-key rule and reports all problems at once,
each naming the TOML key path; ``dump()`` writes any Config as TOML text that parses back to
it (``dgd check-config`` prints it with the secrets redacted). Reading the file and the key is
``dgd.daemon.configfile``'s; this module does no I/O.

It is over the project's 400 lines on purpose: it is the schema of one file, and the defaults,
the parse rule and the dump of each key belong side by side. What TOML itself needs is in
``dgd.core.tomltext``; the checks of the URLs dgd connects to are in ``dgd.core.urlcheck``.
"""

from __future__ import annotations

import enum
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Final

from dgd.core import tomltext, urlcheck
from dgd.core.connection import AUDIO_QUERY_KEYS, SECRET_QUERY_KEYS, region_url
from dgd.core.gate import GateMode
from dgd.core.tomltext import MISSING, Table

# Re-exported: the rest of dgd knows these as config's.
from dgd.core.urlcheck import DEFAULT_URL as DEFAULT_URL
from dgd.core.urlcheck import PROXY_DIRECT as PROXY_DIRECT
from dgd.core.urlcheck import describe_char as describe_char

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

DEFAULT_CONFIG_PATH: Final = "/etc/dgd.toml"
#: Name of the systemd credential (``LoadCredential=deepgram-api-key:/etc/dgd/api-key``).
CREDENTIAL_NAME: Final = "deepgram-api-key"
API_KEY_ENV: Final = "DEEPGRAM_API_KEY"

DEFAULT_QUERY: Final[tuple[tuple[str, str], ...]] = (
    ("model", "nova-3"),
    ("language", "en-US"),
    ("smart_format", "true"),
    ("interim_results", "false"),
)
#: Deepgram closes a live stream after 10 s with neither audio nor a KeepAlive (NET-0001).
DEEPGRAM_IDLE_TIMEOUT_S: Final = 10.0
#: ``TimeoutStopSec=`` of the shipped unit (systemd/dgd.service; a test keeps them equal).
UNIT_STOP_TIMEOUT_S: Final = 20.0
#: The most ``stream.close_timeout_s`` may be: shutdown waits at most that long in all (capture
#: stop, sending the held audio, the final results), and the 5 s left of the unit's stop timeout
#: cover releasing the device and the process exit before systemd would SIGKILL dgd.
MAX_CLOSE_TIMEOUT_S: Final = 15.0
#: The most memory ``stream.replay_buffer_s`` may take (MB, 10**6 bytes): an eighth of a
#: Raspberry Pi Zero 2 W's 512 MB; 2000 s of 16 kHz mono speech (the default takes 3.84 MB).
MAX_REPLAY_BUFFER_MB: Final = 64
SAMPLE_BYTES: Final = 2  # S16_LE

_HEADER: Final = "# dgd configuration (every key; docs/CONFIG.md describes them)"
_REDACTED_HEADER: Final = "# dgd effective configuration (defaults filled in; secrets redacted)"
_REDACTED: Final = "<redacted>"
_TOML_ERROR_POSITION: Final = re.compile(r"\s*\(at (line \d+, column \d+|end of document)\)$")


class LogLevel(enum.StrEnum):
    """``log.level``: the logging threshold (Python's level names, lower-case)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class AuthMode(enum.StrEnum):
    """How dgd authenticates each connection (``deepgram.auth``)."""

    KEY = "key"  # Authorization: Token <API key>
    GRANT = "grant"  # a temporary token from /v1/auth/grant (with the key), sent as Bearer
    COMMAND = "command"  # a token printed by deepgram.token_command, sent as Bearer
    NONE = "none"  # no Authorization header (a self-hosted server without authentication)


class ConfigError(Exception):
    """The configuration (or the API key) is unusable.

    Attributes:
        problems: one line per problem, each ``"<key.path>: <problem> (got <value>)"``.
        source: the file the problems come from, or ``""`` when not known.
    """

    def __init__(self, problems: Iterable[str] | str, *, source: str = "") -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        self.source = source
        super().__init__(*self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


@dataclass(frozen=True, slots=True)
class DeepgramConfig:
    """Where to connect and what to ask for.

    Attributes:
        url: the live endpoint, ``ws://`` or ``wss://``, without a query string (the region's
            endpoint when ``region`` is set).
        region: ``""`` or a key of ``dgd.core.connection.REGION_HOSTS`` (``eu``, ``us``, ...).
        api_key_file: absolute path of a file holding only the key; ``""`` to look elsewhere.
        auth: how each connection authenticates.
        token_command: the program (argv, no shell) that prints a token, for ``auth = "command"``.
        grant_ttl_s: ``ttl_seconds`` asked of ``/v1/auth/grant`` for ``auth = "grant"``.
        ca_file: absolute path of a PEM bundle trusted in addition to the system's CAs.
        proxy: ``""`` (the environment's ``https_proxy``/``no_proxy``, as curl), ``"direct"``, or
            ``http://host:port``.
        proxy_credentials_file: absolute path of a file holding ``user:password`` for the proxy.
        query: ``[deepgram.query]`` as string pairs in file order, lists expanded to repeats.
    """

    url: str = DEFAULT_URL
    region: str = ""
    api_key_file: str = ""
    auth: AuthMode = AuthMode.KEY
    token_command: tuple[str, ...] = ()
    grant_ttl_s: int = 30
    ca_file: str = ""
    proxy: str = ""
    proxy_credentials_file: str = ""
    query: tuple[tuple[str, str], ...] = DEFAULT_QUERY


@dataclass(frozen=True, slots=True)
class AudioConfig:
    """The ALSA capture device and format (always S16_LE)."""

    device: str = "default"
    rate: int = 16000
    channels: int = 1
    period_ms: int = 20


@dataclass(frozen=True, slots=True)
class GateConfig:
    """The silence gate. ``threshold_dbfs`` is None for "auto" (derived from the noise floor)."""

    mode: GateMode = GateMode.ENERGY
    threshold_dbfs: float | None = None
    preroll_ms: int = 300
    hangover_ms: int = 1500


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """The WebSocket link: framing, keep-alive, replay, timeouts and reconnect backoff."""

    frame_ms: int = 100
    keepalive_interval_s: float = 4.0
    replay_buffer_s: float = 120.0
    close_timeout_s: float = 5.0
    connect_timeout_s: float = 10.0
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 10.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    rate_limited_backoff_s: float = 30.0
    rejected_retry_s: float = 300.0


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """Where transcripts go. ``jsonl`` is an absolute path or ``""`` (off); 0 s disables stats."""

    journald: bool = True
    jsonl: str = ""
    interim: bool = False
    stats_interval_s: float = 60.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Logging threshold."""

    level: LogLevel = LogLevel.INFO


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; ``parse({})`` gives the defaults."""

    deepgram: DeepgramConfig = DeepgramConfig()
    audio: AudioConfig = AudioConfig()
    gate: GateConfig = GateConfig()
    stream: StreamConfig = StreamConfig()
    output: OutputConfig = OutputConfig()
    log: LogConfig = LogConfig()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A Deepgram API key and, in words, where it came from. Never printed."""

    value: str = field(repr=False)
    source: str

    def __repr__(self) -> str:
        return f"ApiKey(<redacted>, from {self.source})"

    def __str__(self) -> str:
        return self.__repr__()


def _query(raw: Mapping[str, object], problems: list[str]) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for key, value in raw.items():
        path = f"deepgram.query.{tomltext.key(key)}" if key else "deepgram.query"
        if not key:
            problems.append(f"{path}: parameter name must not be empty")
        elif key.lower() in AUDIO_QUERY_KEYS:
            problems.append(f"{path}: set from [audio]; remove it (got {tomltext.value(value)})")
        elif isinstance(value, list):
            rendered = [_query_value(v) for v in value]
            if any(r is None for r in rendered):
                problems.append(
                    f"{path}: list items must be strings, numbers or booleans"
                    f" (got {tomltext.value(value)})"
                )
            else:
                pairs += [(key, r) for r in rendered if r is not None]
        else:
            text = _query_value(value)
            if text is None:
                problems.append(
                    f"{path}: must be a string, number, boolean or a list of those"
                    f" (got {tomltext.value(value)})"
                )
            else:
                pairs.append((key, text))
    return tuple(pairs)


def _query_value(value: object) -> str | None:
    # Deepgram wants lowercase booleans (python SDK #712 leaked "True" into URLs).
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(value)
    return None


def _token_command(table: Table, auth: AuthMode) -> tuple[str, ...]:
    got = table.take("token_command")
    if got is MISSING:
        argv: tuple[str, ...] = ()
    elif isinstance(got, str):
        argv = (got,) if got else ()
    elif isinstance(got, list) and all(isinstance(item, str) for item in got):
        argv = tuple(str(item) for item in got)
    else:
        table.problem(
            "token_command", "must be a list of strings: the program and its arguments", got
        )
        return ()
    if argv and not argv[0].startswith("/"):
        table.problem(
            "token_command",
            "the program must be an absolute path (no shell runs it, and no PATH is searched)",
            list(argv),
        )
    elif auth is AuthMode.COMMAND and not argv:
        table.problem(
            "token_command",
            'must name the program that prints a token when deepgram.auth = "command"',
        )
    return argv


def _absolute_path(table: Table, key: str, what: str, *, show: bool = True) -> str:
    path = table.string(key, "")
    if path and not path.startswith("/") and key not in table.bad:
        if show:
            table.problem(key, f"must be an absolute path to {what}, or empty", path)
        else:
            # The commonest mistake here is pasting the key itself: don't echo it to the journal.
            table.problem(key, f"must be an absolute path to {what}, not the key (value not shown)")
    return path


_DEFAULTS: Final = Config()


def parse(data: Mapping[str, object]) -> Config:
    """Validate a parsed TOML document (e.g. from ``tomllib.loads``) into a Config.

    Args:
        data: the top-level table. Every key is optional; missing keys take their defaults.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: listing every problem found, each naming its key path.
    """
    d = _DEFAULTS
    problems: list[str] = []
    root = Table("", data, problems)
    tables: dict[str, Table] = {}

    def section(name: str) -> Table:
        tables[name] = Table(name, root.table(name) or {}, problems)
        return tables[name]

    dg = section("deepgram")
    url = urlcheck.ws_url(dg)
    region = urlcheck.region(dg, url)
    if region:
        url = region_url(region)
    key_file = _absolute_path(dg, "api_key_file", "a file holding the API key", show=False)
    auth = dg.choice("auth", d.deepgram.auth)
    token_command = _token_command(dg, auth)
    grant_ttl_s = dg.integer("grant_ttl_s", d.deepgram.grant_ttl_s, 1, 3600)
    ca_file = _absolute_path(dg, "ca_file", "a PEM file of CA certificates")
    proxy = urlcheck.proxy(dg)
    proxy_credentials_file = _absolute_path(
        dg, "proxy_credentials_file", "a file holding user:password for the proxy"
    )
    raw_query = dg.table("query")
    query = DEFAULT_QUERY if raw_query is None else _query(raw_query, problems)

    au = section("audio")
    device = au.string("device", d.audio.device)
    if not device and "device" not in au.bad:
        au.problem("device", "must name an ALSA PCM; `dgd devices` lists them", device)
    rate = au.integer("rate", d.audio.rate, 8000, 192000)
    channels = au.integer("channels", d.audio.channels, 1, 8)
    period_ms = au.integer("period_ms", d.audio.period_ms, 5, 200)
    if not au.bad & {"rate", "period_ms"} and rate * period_ms % 1000:
        # A period must hold whole frames; at 44100 Hz that means multiples of 10 ms.
        step_ms = 1000 // math.gcd(rate, 1000)
        au.problem(
            "period_ms",
            f"must be a multiple of {step_ms} at audio.rate = {rate}, so that each period"
            " holds a whole number of frames",
            period_ms,
        )

    ga = section("gate")
    mode = ga.choice("mode", d.gate.mode)
    threshold = _threshold(ga)
    preroll_ms = ga.integer("preroll_ms", d.gate.preroll_ms, 0, 5000)
    hangover_ms = ga.integer("hangover_ms", d.gate.hangover_ms, 0, 10000)

    st = section("stream")
    # With a bad period, check frame_ms only against the smallest valid period.
    frame_lo_ms = 5 if "period_ms" in au.bad else period_ms
    frame_ms = st.integer("frame_ms", d.stream.frame_ms, frame_lo_ms, 1000)
    if "period_ms" in au.bad:
        pass  # the period is wrong, so "a multiple of it" means nothing yet
    elif "frame_ms" not in st.bad and frame_ms % period_ms:
        st.problem("frame_ms", f"must be a multiple of audio.period_ms = {period_ms}", frame_ms)
    idle = f"; Deepgram closes the stream after {DEEPGRAM_IDLE_TIMEOUT_S:g} s without data"
    keepalive_s = st.number("keepalive_interval_s", d.stream.keepalive_interval_s, 0.5, 9.0, idle)
    replay_s = st.number("replay_buffer_s", d.stream.replay_buffer_s, 0.0, 3600.0)
    if not (au.bad & {"rate", "channels"} or "replay_buffer_s" in st.bad):
        _replay_memory(st, rate, channels, replay_s)
    close_s = st.number(
        "close_timeout_s",
        d.stream.close_timeout_s,
        0.5,
        MAX_CLOSE_TIMEOUT_S,
        above=f"; the shipped unit stops dgd after TimeoutStopSec={UNIT_STOP_TIMEOUT_S:g}s, which"
        " must also cover releasing the device and exiting",
    )
    connect_s = st.number("connect_timeout_s", d.stream.connect_timeout_s, 1.0, 120.0)
    ping_interval_s = st.number("ping_interval_s", d.stream.ping_interval_s, 1.0, 60.0)
    ping_timeout_s = st.number("ping_timeout_s", d.stream.ping_timeout_s, 1.0, 60.0)
    backoff_initial_s = st.number("backoff_initial_s", d.stream.backoff_initial_s, 0.1, 60.0)
    backoff_max_s = st.number("backoff_max_s", d.stream.backoff_max_s, 1.0, 3600.0)
    if not st.bad & {"backoff_initial_s", "backoff_max_s"} and backoff_max_s < backoff_initial_s:
        st.problem(
            "backoff_max_s",
            f"must be >= stream.backoff_initial_s = {backoff_initial_s!r}",
            backoff_max_s,
        )
    rate_limited_s = st.number(
        "rate_limited_backoff_s", d.stream.rate_limited_backoff_s, 1.0, 3600.0
    )
    rejected_s = st.number("rejected_retry_s", d.stream.rejected_retry_s, 10.0, 86400.0)

    ou = section("output")
    journald = ou.boolean("journald", d.output.journald)
    jsonl = _absolute_path(ou, "jsonl", "the JSON-lines transcript file")
    interim = ou.boolean("interim", d.output.interim)
    stats_s = ou.number("stats_interval_s", d.output.stats_interval_s, 0.0, 86400.0)

    lo = section("log")
    level = lo.choice("level", d.log.level)

    schema = {"": root.known} | {name: t.known for name, t in tables.items()}
    schema["deepgram"] = [k for k in dg.known if k != "query"]  # query is a table, not a key
    root.unknown_keys(schema)
    for t in tables.values():
        t.unknown_keys(schema)
    if problems:
        raise ConfigError(problems)
    return Config(
        deepgram=DeepgramConfig(
            url=url,
            region=region,
            api_key_file=key_file,
            auth=auth,
            token_command=token_command,
            grant_ttl_s=grant_ttl_s,
            ca_file=ca_file,
            proxy=proxy,
            proxy_credentials_file=proxy_credentials_file,
            query=query,
        ),
        audio=AudioConfig(device=device, rate=rate, channels=channels, period_ms=period_ms),
        gate=GateConfig(
            mode=mode, threshold_dbfs=threshold, preroll_ms=preroll_ms, hangover_ms=hangover_ms
        ),
        stream=StreamConfig(
            frame_ms=frame_ms,
            keepalive_interval_s=keepalive_s,
            replay_buffer_s=replay_s,
            close_timeout_s=close_s,
            connect_timeout_s=connect_s,
            ping_interval_s=ping_interval_s,
            ping_timeout_s=ping_timeout_s,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            rate_limited_backoff_s=rate_limited_s,
            rejected_retry_s=rejected_s,
        ),
        output=OutputConfig(
            journald=journald, jsonl=jsonl, interim=interim, stats_interval_s=stats_s
        ),
        log=LogConfig(level=level),
    )


def _replay_memory(table: Table, rate: int, channels: int, replay_s: float) -> None:
    bytes_per_s = rate * channels * SAMPLE_BYTES
    if bytes_per_s * replay_s > MAX_REPLAY_BUFFER_MB * 1e6:
        # Rounded away from the bound, so that the message never shows "64.0 MB > 64 MB".
        megabytes = math.ceil(round(bytes_per_s * replay_s / 1e5, 6)) / 10
        most_s = math.floor(round(MAX_REPLAY_BUFFER_MB * 1e7 / bytes_per_s, 6)) / 10
        table.problem(
            "replay_buffer_s",
            f"would take {megabytes:.1f} MB of memory (audio.rate {rate} Hz x audio.channels"
            f" {channels} x {SAMPLE_BYTES} bytes x {replay_s:g} s); at most"
            f" {MAX_REPLAY_BUFFER_MB} MB is allowed, {most_s:g} s at this format",
            table.raw.get("replay_buffer_s"),
        )


def _threshold(table: Table) -> float | None:
    value = table.take("threshold_dbfs")
    if value is MISSING or value == "auto":
        return None
    # -100 dBFS is below any real microphone's noise floor; 0 dBFS is full scale.
    if isinstance(value, bool) or not isinstance(value, int | float):
        table.problem("threshold_dbfs", 'must be "auto" or a number between -100.0 and 0.0', value)
        return None
    return float(value) if table.in_range("threshold_dbfs", value, -100.0, 0.0, "") else None


def loads(text: str, source: str = "<string>") -> Config:
    """Parse and validate TOML text.

    Args:
        text: the TOML document.
        source: where it came from, for syntax-error messages (a path, or ``"<string>"``).

    Raises:
        ConfigError: a TOML syntax error (``"<source>: line N, column C: <what>"``) or the
            validation problems from ``parse()``.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_ERROR_POSITION.search(message)
        what = message[: match.start()] if match else message
        where = match.group(1) if match else "end of document"
        if where == "end of document":
            # tomllib gives no line here; the last line is where the reader ran out.
            where = f"line {text.count(chr(10)) + 1} (end of file)"
        raise ConfigError(f"{source}: {where}: TOML syntax error: {what}", source=source) from None
    try:
        return parse(data)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source=source) from None


def dump(config: Config, *, redact_secrets: bool = False) -> str:
    """The configuration as TOML text, every key present; ``loads(dump(c)) == c``.

    Args:
        config: a valid Config (one ``parse`` could return); the API key is never part of one.
        redact_secrets: show query parameters that carry credentials (``SECRET_QUERY_KEYS``)
            as ``"<redacted>"``, for ``dgd check-config``; the text then no longer round-trips.

    Raises:
        ValueError: the repeats of a query parameter are not adjacent (no file can say that).
    """
    lines = [_REDACTED_HEADER if redact_secrets else _HEADER]
    for section in fields(config):
        table = getattr(config, section.name)
        lines += ["", f"[{section.name}]"]
        for item in fields(table):
            if item.name != "query":
                lines.append(f"{item.name} = {tomltext.value(getattr(table, item.name))}")
        if isinstance(table, DeepgramConfig):
            query = table.query
            if redact_secrets:
                query = tuple(
                    (k, _REDACTED if k.lower() in SECRET_QUERY_KEYS else v) for k, v in query
                )
            lines += ["", "[deepgram.query]", *tomltext.string_pairs(query)]
    return "\n".join(lines) + "\n"
