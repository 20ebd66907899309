"""The recording of ``--record-dir``: what each connection attempt received and sent.

Attempt N writes ``conn-NNNN.raw`` (the audio bytes, as received) and ``conn-NNNN.jsonl``
(one JSON object per line: handshake, text, binary, sent, fault, close; format in
FAKE_SERVER.md). Secret query values are redacted (``dgd.core.connection.SECRET_QUERY_KEYS``).
Without a record directory the recorder records nothing.
"""

from __future__ import annotations

import json
import time
from typing import IO, TYPE_CHECKING, Final

from dgd.core.connection import SECRET_QUERY_KEYS

if TYPE_CHECKING:
    from pathlib import Path

#: Longest text of a sent message kept verbatim in the recording (the 1 MB malformed one isn't).
_MAX_RECORDED_TEXT_CHARS: Final = 65536


class _Recorder:
    """``conn-NNNN.raw`` and ``conn-NNNN.jsonl`` of one connection attempt (or nothing)."""

    def __init__(self, record_dir: Path | None, attempt: int) -> None:
        self._jsonl: IO[str] | None = None
        self._raw: IO[bytes] | None = None
        if record_dir is not None:
            stem = record_dir / f"conn-{attempt:04d}"
            self._jsonl = stem.with_suffix(".jsonl").open("w", encoding="utf-8")
            self._raw = stem.with_suffix(".raw").open("wb")

    def event(self, kind: str, **fields: object) -> None:
        if self._jsonl is not None:
            self._line(json.dumps({"t": time.time(), "kind": kind, **fields}))

    def sent(self, text: str, *, known_json: bool) -> None:
        """Record a sent message; JSON is spliced in as is, without re-encoding it."""
        if self._jsonl is None:
            return
        if len(text) <= _MAX_RECORDED_TEXT_CHARS and (known_json or _is_json_object(text)):
            self._line(f'{{"t": {time.time()!r}, "kind": "sent", "message": {text}}}')
        else:
            head = text[:200]
            self._line(
                json.dumps({"t": time.time(), "kind": "sent", "text": head, "len": len(text)})
            )

    def audio(self, data: bytes, offset: int) -> None:
        if self._jsonl is None or self._raw is None:
            return
        self._raw.write(data)
        self._raw.flush()
        self._line(
            f'{{"t": {time.time()!r}, "kind": "binary", "len": {len(data)}, "offset": {offset}}}'
        )

    def close(self) -> None:
        for file in (self._jsonl, self._raw):
            if file is not None:
                file.close()

    def _line(self, line: str) -> None:
        assert self._jsonl is not None
        self._jsonl.write(line + "\n")
        self._jsonl.flush()


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _recordable_query(query: dict[str, list[str]]) -> dict[str, str | list[str]]:
    recorded: dict[str, str | list[str]] = {}
    for key, values in query.items():
        if key.lower() in SECRET_QUERY_KEYS:
            recorded[key] = "<redacted>"
        else:
            recorded[key] = values[0] if len(values) == 1 else values
    return recorded
