"""Reading the configuration file and the API key: the I/O around ``dgd.core.config``'s parser.

``load(path)`` is the only place the config file is read; ``load_api_key`` looks at
``deepgram.api_key_file``, the systemd credential and ``$DEEPGRAM_API_KEY``, in that order.
No message ever contains the key.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from typing import TYPE_CHECKING

from dgd.core.config import (
    API_KEY_ENV,
    CREDENTIAL_NAME,
    ApiKey,
    AuthMode,
    Config,
    ConfigError,
    describe_char,
    loads,
)
from dgd.core.connection import is_deepgram_host

if TYPE_CHECKING:
    from collections.abc import Mapping

    from dgd.core.config import DeepgramConfig


def load(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a config file (the only place the config file is read).

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8 or invalid; names the path.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        raise ConfigError(
            f"{name}: config file not found; create it (etc/dgd.toml in the source lists every"
            " key with its default) or pass another with -c PATH",
            source=name,
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a config file", source=name) from None
    except PermissionError:
        raise ConfigError(
            f"{name}: permission denied; make it readable by the user dgd runs as",
            source=name,
        ) from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read config file: {exc.strerror}", source=name) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{name}: not valid UTF-8 (byte {exc.start}); TOML files must be UTF-8", source=name
        ) from None
    return loads(text, source=name)


def _read_key(path: str, where: str, *, may_be_empty: bool = False) -> str:
    """Read and check a key file; ``where`` names the setting that pointed at it. An empty
    file gives ``""`` when ``may_be_empty`` (a self-hosted server needs no key)."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        raise ConfigError(
            f"{where}: {path} does not exist; create it holding only the key"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"{where}: {path}: permission denied; make it readable by the user dgd runs as"
            " (or pass it with systemd LoadCredential=)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    try:
        key = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not text; it must hold only the API key") from None
    if not key:
        if may_be_empty:
            return ""
        raise ConfigError(f"{where}: {path} is empty; put the Deepgram API key in it")
    if any(c.isspace() for c in key):
        raise ConfigError(
            f"{where}: {path} holds more than one word; it must hold only the API key"
        )
    check_key_characters(key, f"{where}: {path}")
    return key


def check_key_characters(key: str, where: str) -> None:
    """Refuse a key that the ``Authorization`` header cannot carry.

    An HTTP header value is latin-1 (wsclient encodes it so; anything beyond U+00FF would end
    `dgd run` with a UnicodeEncodeError at the first connection), and control characters are
    not allowed in one. The message names the character and its position, never the key.

    Raises:
        ConfigError: ``"<where>: character N of the key is ..."``.
    """
    for position, char in enumerate(key, 1):
        if ord(char) > 0xFF or not char.isprintable():
            name = unicodedata.name(char, "a control character")
            raise ConfigError(
                f"{where}: character {position} of the key is {describe_char(char)}, {name},"
                " which an HTTP header cannot carry; copy the key again (Deepgram keys are"
                " letters and digits), e.g. from the Deepgram console"
            )


def load_api_key(cfg: DeepgramConfig, environ: Mapping[str, str]) -> tuple[ApiKey, list[str]]:
    """Find the Deepgram API key.

    Looks, in order, at ``deepgram.api_key_file`` (if set), the systemd credential
    ``$CREDENTIALS_DIRECTORY/deepgram-api-key`` (if that file exists), then
    ``$DEEPGRAM_API_KEY``. Surrounding whitespace is stripped. No message contains the key.

    ``deepgram.auth = "command"`` or ``"none"`` uses no key: none is read (``ApiKey("")``).
    With ``"key"`` and a self-hosted server (a ``deepgram.url`` host outside deepgram.com) the
    key is optional: no key, or an empty file, gives ``ApiKey("")`` and dgd sends no
    ``Authorization`` header; the server's 401 then says that it wants one.

    Args:
        cfg: the [deepgram] config.
        environ: the process environment (``os.environ`` in production).

    Returns:
        The key, and warnings for the operator (a key file readable by group or others).

    Raises:
        ConfigError: no key anywhere, or the chosen source is unreadable, empty or malformed.
    """
    warnings: list[str] = []
    if cfg.auth in (AuthMode.COMMAND, AuthMode.NONE):
        return ApiKey("", f'none needed (deepgram.auth = "{cfg.auth}")'), warnings
    optional = cfg.auth is AuthMode.KEY and not is_deepgram_host(cfg.url)
    no_key = ApiKey("", "none (a self-hosted server: connecting without an Authorization header)")
    if cfg.api_key_file:
        path = cfg.api_key_file
        key = _read_key(path, "deepgram.api_key_file", may_be_empty=optional)
        if not key:
            return no_key, warnings
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = 0  # it was readable a moment ago; the warning is only advice
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            warnings.append(
                f"deepgram.api_key_file: {path} is readable by group or others;"
                f" run: chmod 600 {path}"
            )
        return ApiKey(key, f"file {path}"), warnings

    cred_dir = environ.get("CREDENTIALS_DIRECTORY", "")
    if cred_dir:
        path = os.path.join(cred_dir, CREDENTIAL_NAME)
        if os.path.exists(path):
            try:
                key = _read_key(path, f"credential {CREDENTIAL_NAME}", may_be_empty=optional)
            except ConfigError as exc:
                raise ConfigError(
                    f"{problem} (the shipped unit loads it from /etc/dgd/api-key: "
                    "`sudoedit /etc/dgd/api-key`, then `systemctl restart dgd`)"
                    for problem in exc.problems
                ) from None
            if not key:
                return no_key, warnings
            return ApiKey(key, f"credential {CREDENTIAL_NAME}"), warnings

    if environ.get(API_KEY_ENV, "").strip():
        key = environ[API_KEY_ENV].strip()
        if any(c.isspace() for c in key):
            raise ConfigError(f"${API_KEY_ENV}: holds more than one word; set it to the key only")
        check_key_characters(key, f"${API_KEY_ENV}")
        return ApiKey(key, f"environment {API_KEY_ENV}"), warnings

    if optional:
        return no_key, warnings
    looked = (
        f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME} does not exist"
        if cred_dir
        else "$CREDENTIALS_DIRECTORY is not set"
    )
    raise ConfigError(
        f"deepgram.api_key_file: no Deepgram API key found (deepgram.api_key_file is empty,"
        f" {looked}, ${API_KEY_ENV} is not set or empty); put the key in a file readable only"
        f" by dgd (chmod 600) and either set deepgram.api_key_file to its path or add"
        f" LoadCredential={CREDENTIAL_NAME}:/etc/dgd/api-key to the unit; or set ${API_KEY_ENV}"
    )


def check_token_command(cfg: DeepgramConfig) -> None:
    """Refuse a ``deepgram.token_command`` that cannot run: its program is missing, not a
    file, or not executable by this user (``dgd run`` would fail on every connection).

    Raises:
        ConfigError: naming the key, the path and what to do.
    """
    if cfg.auth is not AuthMode.COMMAND or not cfg.token_command:
        return
    program = cfg.token_command[0]
    if not os.path.exists(program):
        raise ConfigError(f"deepgram.token_command: {program} does not exist")
    if not os.path.isfile(program):
        raise ConfigError(f"deepgram.token_command: {program} is not a file")
    if not os.access(program, os.X_OK):
        raise ConfigError(
            f"deepgram.token_command: {program} is not executable by this user"
            f" (chmod 755 {program}; under systemd dgd runs as a dynamic user)"
        )
