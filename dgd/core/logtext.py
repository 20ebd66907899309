"""Remote text made safe for one log line: bounded in length, control characters removed.

Both parsers of what the server sends use these: ``dgd.core.messages`` for the excerpt of a
message it could not understand, ``dgd.core.connection`` for handshake rejections and close
reasons. Pure; never raises.
"""

from __future__ import annotations

import re
from typing import Final

_WHITESPACE_RUN: Final = re.compile(r"\s+")


def printable(text: str, limit: int) -> str:
    """Returns at most ``limit`` characters of ``text``, non-printables backslash-escaped."""
    out: list[str] = []
    used = 0
    for char in text:
        piece = char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        if used + len(piece) > limit:
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


def one_line(text: str, limit: int) -> str:
    """``text`` as one printable line of at most ``limit`` characters."""
    spaced = "".join(char if char.isprintable() else " " for char in text[: limit * 4])
    return _WHITESPACE_RUN.sub(" ", spaced).strip()[:limit]
