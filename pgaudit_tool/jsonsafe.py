"""JSON read from the database, decoded whatever a writer stored in it.

Row images, keys and the application context are JSON a writer of an audited table chooses.
Python's ``json`` module decodes (and encodes) nested arrays and objects by recursion, so a
value nested about a thousand levels deep raises RecursionError, and PostgreSQL accepts jsonb
nested tens of thousands of levels deep (as deep as its ``max_stack_depth`` allows).

:func:`loads` therefore decodes a value into Python objects only when it is nested at most
:data:`MAX_DEPTH` levels deep. A deeper value is split at its top level (a row image's columns,
an array's elements): every member within the limit is decoded, and each member nested deeper is
kept as a :class:`RawJson`, its JSON text, which every output format writes verbatim. Nothing is
ever parsed by recursion past the limit, so no depth makes a review command fail.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

__all__ = ["MAX_DEPTH", "RawJson", "depth", "loads"]

#: Deepest nesting decoded into Python objects; deeper values stay JSON text (RawJson).
#: Low enough that recursive code handling the decoded data (ours, the json module's, the
#: caller's) stays far from Python's recursion limit.
MAX_DEPTH = 200

# A JSON string (escapes included), or one structural character.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')
_OPEN = frozenset("[{")
_CLOSE = frozenset("]}")


class RawJson:
    """A JSON value nested too deeply to decode, kept as its text (``.text``): output verbatim."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        # Outside strings, JSON may only hold line breaks as whitespace: one line, same value.
        self.text = text.strip().replace("\r", " ").replace("\n", " ")

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= 40 else self.text[:39] + "…"
        return f"RawJson({shown!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawJson) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _text(data: str | bytes | bytearray | memoryview) -> str:
    return data if isinstance(data, str) else bytes(data).decode("utf-8")


# One decoder for every value: json.loads with options builds a new one per call (most of the
# time spent on a small row image).
_DECODER = json.JSONDecoder(parse_float=Decimal)


def _decode(text: str) -> Any:
    return _DECODER.decode(text)


def depth(text: str) -> int:
    """How deeply arrays and objects nest in the JSON ``text`` (0: a scalar), without recursion."""
    level = deepest = 0
    for match in _TOKEN.finditer(text):
        token = match[0]
        if token in _OPEN:
            level += 1
            deepest = max(deepest, level)
        elif token in _CLOSE:
            level -= 1
    return deepest


def loads(data: str | bytes | bytearray | memoryview) -> Any:
    """Decode JSON text (numbers with a fraction or exponent as exact ``Decimal``).

    Values nested deeper than :data:`MAX_DEPTH` are decoded down to their top-level members;
    a member nested too deeply stays a :class:`RawJson`.
    """
    text = _text(data)
    # Fewer brackets than the limit cannot nest deeper than it: the common, fast case.
    if text.count("[") + text.count("{") <= MAX_DEPTH or depth(text) <= MAX_DEPTH:
        return _decode(text)
    return _split(text)


def _member(piece: str, deepest: int) -> Any:
    return _decode(piece) if deepest <= MAX_DEPTH else RawJson(piece)


def _split(text: str) -> Any:
    """The top-level array or object of ``text``, each member decoded or kept as RawJson."""
    is_object = text.lstrip().startswith("{")
    keys: list[str] = []
    values: list[Any] = []
    level = deepest = 0
    start = 0
    for match in _TOKEN.finditer(text):
        token = match[0]
        if token in _OPEN:
            level += 1
            if level == 1:
                start = match.end()
            deepest = max(deepest, level - 1)
        elif token in _CLOSE:
            level -= 1
            if level == 0:
                piece = text[start : match.start()]
                if piece.strip():
                    values.append(_member(piece, deepest))
                break
        elif level == 1 and token == ":":
            keys.append(_decode(text[start : match.start()]))
            start = match.end()
        elif level == 1 and token == ",":
            values.append(_member(text[start : match.start()], deepest))
            start, deepest = match.end(), 0
    if is_object:
        return dict(zip(keys, values, strict=True))
    return values
