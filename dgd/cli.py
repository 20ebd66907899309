"""The command line: ``dgd run | check-config | devices | levels | fake-server | demo``.

Process concerns only: arguments, logging set-up, exit codes (0 clean stop, 2 bad usage,
78 invalid config, 1 unexpected), and ``trio.run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Final

from dgd import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

    from dgd.core.config import Config, ConfigError

EX_OK: Final = 0
EX_UNEXPECTED: Final = 1
EX_USAGE: Final = 2
EX_CONFIG: Final = 78

log = logging.getLogger("dgd.cli")

#: Set by a SIGHUP that arrives before the daemon listens for signals itself.
_early_reload: list[int] = []


def _remember_reload(signum: int, _frame: object) -> None:
    # SIGHUP's default action ends the process (status 129, which systemd does not restart):
    # until the daemon's own receiver takes over, a reload request is only remembered.
    _early_reload.append(signum)


def _parser() -> argparse.ArgumentParser:
    from dgd.core.config import LogLevel

    parser = argparse.ArgumentParser(
        prog="dgd",
        description="Capture audio from ALSA, gate silence, stream speech to Deepgram, "
        "write transcripts to journald.",
    )
    parser.add_argument("--version", action="version", version=f"dgd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-c", "--config", default=None, help="config file (default /etc/dgd.toml)")
    run.add_argument(
        "--log-target",
        choices=("auto", "journal", "stderr"),
        default="auto",
        help="where log lines go (auto: the journal when started by systemd, else stderr)",
    )
    run.add_argument(
        "--log-level",
        choices=[level.value for level in LogLevel],
        default=None,
        help="override log.level from the config",
    )

    check = commands.add_parser("check-config", help="validate the config and print it")
    check.add_argument("-c", "--config", default=None, help="config file (default /etc/dgd.toml)")
    device = check.add_mutually_exclusive_group()
    device.add_argument(
        "--no-device", action="store_true", help="do not try to open the audio device"
    )
    device.add_argument(
        "--require-device",
        action="store_true",
        help="fail (exit 78) when the audio device is absent, instead of warning "
        "(dgd run waits for it)",
    )

    commands.add_parser("devices", help="list ALSA capture devices", add_help=False)
    commands.add_parser("levels", help="live input level meter", add_help=False)
    commands.add_parser(
        "fake-server", help="run the local Deepgram-compatible server", add_help=False
    )
    commands.add_parser(
        "demo", help="run the daemon on the bundled sample against the fake server", add_help=False
    )
    return parser


PASSTHROUGH: Final = ("devices", "levels", "fake-server", "demo")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dgd`` command; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["run"]:
        # As early as possible: until the daemon listens for signals itself, SIGHUP's default
        # action would end it (status 129, which systemd does not restart).
        signal.signal(signal.SIGHUP, _remember_reload)
    if args_list and args_list[0] in PASSTHROUGH:
        return _passthrough(args_list[0], args_list[1:])
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    if args.command == "check-config":
        return check_config(
            args.config, open_device=not args.no_device, require_device=args.require_device
        )
    return run(args.config, args.log_target, args.log_level)


def _passthrough(command: str, rest: list[str]) -> int:
    if command == "fake-server":
        from dgd.testing import fakeserver

        return fakeserver.main(rest)
    if command == "demo":
        from dgd.tools import demo

        return demo.main(rest)
    module = importlib.import_module(f"dgd.tools.{command}")
    exit_code: int = module.main(rest)
    return exit_code


def _config_path(path: str | None) -> str:
    from dgd.core.config import DEFAULT_CONFIG_PATH

    return path or os.environ.get("DGD_CONFIG", "") or DEFAULT_CONFIG_PATH


def check_config(path: str | None, *, open_device: bool, require_device: bool = False) -> int:
    """``dgd check-config``: print the effective config (key redacted) or the problems.

    It refuses what ``dgd run`` would refuse (the same ``load`` and ``load_api_key``). A device
    that is absent right now is only a warning, since ``dgd run`` waits for it, unless
    ``require_device`` (``--require-device``, for provisioning scripts).
    """
    from dgd.core.config import ConfigError, dump
    from dgd.daemon.configfile import check_token_command, load, load_api_key
    from dgd.daemon.transport import network_for

    config_path = _config_path(path)
    try:
        config = load(config_path)
    except ConfigError as exc:
        print(f"{config_path}: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    problems: list[str] = []
    warnings: list[str] = []
    key_line = "# API key: not found"
    try:
        key, warnings = load_api_key(config.deepgram, os.environ)
        key_line = f"# API key: <redacted>, from {key.source}"
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        check_token_command(config.deepgram)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        # The CA file, the proxy credentials file and the proxy in force (the environment's
        # when deepgram.proxy is empty), exactly as each connection attempt reads them.
        network_for(config.deepgram, os.environ)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if open_device:
        device_problems, absent = _device_problems(config)
        if absent and not require_device:
            warnings += [
                f"{problem}; `dgd run` waits for it (--require-device makes this an error)"
                for problem in device_problems
            ]
        else:
            problems.extend(device_problems)
    print(f"# effective configuration from {config_path}")
    print(key_line)
    print(dump(config, redact_secrets=True))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return EX_CONFIG
    return EX_OK


def _device_problems(config: Config) -> tuple[list[str], bool]:
    """Open the device as ``dgd run`` would: `dgd.daemon.alsadevice.open_pcm` also refuses one
    that does not deliver the configured format (S16_LE, audio.rate, audio.channels).

    Returns:
        The problems, and whether the device is absent right now (missing or unplugged:
        ``dgd run`` waits for it). A device in the wrong format is never merely absent.
    """
    from dgd.core.pipeline import pcm_format
    from dgd.daemon.alsadevice import DeviceError, DeviceProblem, read_periods
    from dgd.tools.devices import DeviceTimeout, open_with_timeout

    audio = config.audio
    fmt = pcm_format(config)
    try:
        pcm = open_with_timeout(audio.device, fmt, 2.0, read_periods(fmt, config.stream.frame_ms))
    except DeviceError as exc:
        absent = exc.problem in (DeviceProblem.MISSING, DeviceProblem.UNPLUGGED)
        return [f"audio.device: {exc}"], absent
    except DeviceTimeout:
        return [f'audio.device: "{audio.device}" did not answer within 2 s (busy or hung?)'], False
    pcm.close()
    return [], False


def run(path: str | None, log_target: str, log_level: str | None) -> int:
    """``dgd run``: the daemon in the foreground until SIGTERM/SIGINT."""
    import trio

    from dgd.core.config import API_KEY_ENV, ApiKey, ConfigError, LogLevel
    from dgd.daemon import logsetup
    from dgd.daemon.configfile import check_token_command, load, load_api_key
    from dgd.daemon.transport import network_for

    # Before the key is read: no core dump may ever hold it (a failure is logged, not fatal).
    logsetup.forbid_core_dumps()
    config_path = _config_path(path)
    # Where the key is looked up, also on reload: $DEEPGRAM_API_KEY leaves os.environ below.
    key_environ = dict(os.environ)
    try:
        config = load(config_path)
        key, warnings = load_api_key(config.deepgram, key_environ)
        check_token_command(config.deepgram)
        network_for(config.deepgram, os.environ)
    except ConfigError as exc:
        logsetup.setup(log_target, LogLevel.INFO, os.environ)
        logsetup.event(
            "config_error",
            "%s: invalid configuration, not starting:\n%s",
            config_path,
            exc,
            level=logging.ERROR,
        )
        return EX_CONFIG
    logsetup.register_secrets(key.value, config.deepgram.query)
    logsetup.remove_from_environment(API_KEY_ENV)
    level = LogLevel(log_level) if log_level else config.log.level
    chosen = logsetup.setup(log_target, level, os.environ)
    if chosen == "journal":
        logsetup.capture_stderr()
    for warning in warnings:
        logsetup.event("config_warning", "%s", warning, level=logging.WARNING)

    def reload() -> tuple[Config, ApiKey]:
        new_config = load(config_path)
        new_key, new_warnings = load_api_key(new_config.deepgram, key_environ)
        check_token_command(new_config.deepgram)
        network_for(new_config.deepgram, os.environ)
        logsetup.register_secrets(new_key.value, new_config.deepgram.query)
        for warning in new_warnings:
            logsetup.event("config_warning", "%s", warning, level=logging.WARNING)
        return new_config, new_key

    from dgd.daemon.app import Daemon
    from dgd.daemon.sdnotify import Notifier
    from dgd.daemon.sinks import JOURNAL_SOCKET, TranscriptSinks

    # Always at hand: output.journald may be switched on by a reload.
    journal_send = logsetup.journal_module().send
    notifier = Notifier(os.environ)
    sinks = TranscriptSinks(
        config.output, journal_send, echo_to_log=chosen == "stderr", journal_socket=JOURNAL_SOCKET
    )
    try:
        daemon = Daemon(
            config,
            key,
            notifier=notifier,
            reload_config=reload,
            sinks=sinks,
            signals_before_start=_early_reload,
        )
        trio.run(daemon.run, restrict_keyboard_interrupt_to_checkpoints=True)
    except KeyboardInterrupt:
        return EX_OK
    except Exception as exc:
        config_error = config_error_in(exc)
        if config_error is not None:
            # Validation should have caught it at start-up; still a config error, not a crash:
            # exit 78, which systemd does not restart.
            logsetup.event(
                "config_error",
                "%s: invalid configuration, stopping:\n%s",
                config_path,
                config_error,
                level=logging.ERROR,
            )
            return EX_CONFIG
        log.exception(
            "dgd stopped on an unexpected error; please report it",
            extra={"DGD_EVENT": "crashed"},
        )
        return EX_UNEXPECTED
    finally:
        sinks.close()
        notifier.close()
    return EX_OK


def config_error_in(exc: BaseException) -> ConfigError | None:
    """The ConfigError that ``exc`` is, or that is all an exception group holds, else None.

    trio wraps what a task raises in an ExceptionGroup, so a ConfigError from inside the daemon
    reaches ``run`` as one.
    """
    from dgd.core.config import ConfigError

    if isinstance(exc, ConfigError):
        return exc
    if not isinstance(exc, BaseExceptionGroup):
        return None
    matched, rest = exc.split(ConfigError)
    if matched is None or rest is not None:
        return None
    problems: list[str] = []
    pending: list[BaseException] = [matched]
    while pending:
        item = pending.pop(0)
        if isinstance(item, BaseExceptionGroup):
            pending[:0] = item.exceptions
        elif isinstance(item, ConfigError):
            problems.extend(item.problems)
    return ConfigError(problems)
