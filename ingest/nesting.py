"""Bounds on JSON nesting, so that no body makes the gateway answer 500 (SPEC §2).

The JSON decoders recurse: msgspec raises RecursionError (not DecodeError) once nesting
reaches the interpreter's recursion limit (~1,000 levels minus the caller's stack), and
orjson stops at 1,024 levels. Ingest therefore decodes a body as is (the common case costs
nothing extra) and, only when that runs out of stack, decodes `prune_nesting(body)`: the
same text with every container nested deeper than `KEEP_DEPTH` replaced by `null`.
`KEEP_DEPTH` lies far below any decoder's bound and far above where anything the gateway
reads sits (props start at level 3 or 4), so a pruned event keeps enough nesting to be
rejected as too deep, and nothing that is accepted changes.

`nesting_exceeds` is the per-event check of decoded props (`too_deep`).
"""

from __future__ import annotations

import re
from typing import Any, Final

# Levels kept by `prune_nesting`: above validation's props limit (32) plus the envelope's
# own levels, below msgspec's and orjson's bounds (~1,000).
KEEP_DEPTH: Final = 64
# No event within the 32 KB event limit nests deeper (each level takes at least the two
# bytes `[]`), so a deeper body cannot be a batch of acceptable events: it is refused as a
# whole, which also bounds the work spent on it.
MAX_PARSE_DEPTH: Final = 16_384

# A whole string (its brackets are text), a run of openers, or a run of closers; runs are
# one token so that `[[[[...` costs one match, not one per level.
_TOKEN = re.compile(
    rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{](?:[ \t\r\n]*[\[{])*|[\]}](?:[ \t\r\n]*[\]}])*', re.DOTALL
)
_QUOTE, _OPEN_OBJECT, _OPEN_ARRAY = 0x22, 0x7B, 0x5B
_BRACKETS: Final = frozenset(b"[]{}")
_JSON_WHITESPACE: Final = b" \t\r\n"


class NestingTooDeep(ValueError):
    """The body nests more than `MAX_PARSE_DEPTH` levels."""


def _after_bracket(token: bytes, count: int) -> int:
    """Offset in `token` (a run of brackets, maybe with whitespace) just past its
    `count`-th bracket."""
    if len(token.translate(None, _JSON_WHITESPACE)) == len(token):
        return count
    seen = 0
    for offset, byte in enumerate(token):
        if byte in _BRACKETS:
            seen += 1
            if seen == count:
                return offset + 1
    raise ValueError(f"token has fewer than {count} brackets")


def prune_nesting(data: bytes, keep: int = KEEP_DEPTH, limit: int = MAX_PARSE_DEPTH) -> bytes:
    """`data` with every array or object that opens below level `keep` replaced by `null`
    (the top-level value is level 1). Raises NestingTooDeep past `limit` levels.

    Meant for text a decoder refused for its depth: it tokenizes in Python, about 1 µs per
    string or run of brackets. Text that is not JSON stays not JSON except, possibly, inside
    a pruned part (never stored: such an event is rejected for its depth or its pruned
    field is one the gateway ignores); the decoder reports the rest.
    """
    pieces: list[bytes] = []
    copied = 0  # data[:copied] is in pieces (or pruned)
    cut_from: int | None = None  # where the pruned container opened
    depth = 0
    for match in _TOKEN.finditer(data):
        token = match.group()
        first = token[0]
        if first == _QUOTE:
            continue
        if first in (_OPEN_OBJECT, _OPEN_ARRAY):
            opened = token.count(b"[") + token.count(b"{")
            if depth + opened > limit:
                raise NestingTooDeep(f"body is nested more than {limit} levels deep")
            if cut_from is None and depth + opened > keep:
                cut_from = match.start() + _after_bracket(token, keep - depth + 1) - 1
            depth += opened
            continue
        closed = token.count(b"]") + token.count(b"}")
        if cut_from is not None and depth - closed <= keep:
            pieces += (data[copied:cut_from], b"null")
            copied = match.start() + _after_bracket(token, depth - keep)
            cut_from = None
        depth -= closed
    # An unclosed pruned container leaves the text cut short: still not JSON, as it was.
    pieces.append(data[copied:cut_from])
    return b"".join(pieces)


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether decoded JSON nests more than `limit` levels (a container is level 1; a
    scalar has no levels). Walks level by level without recursion and stops at `limit`."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        if not level:
            return False
        below: list[Any] = []
        for container in level:
            for item in container.values() if isinstance(container, dict) else container:
                if isinstance(item, dict | list):
                    below.append(item)
        level = below
    return bool(level)
