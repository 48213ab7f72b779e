"""The elements of a top-level JSON array, decoded one at a time from a text stream.

The standard library parses whole documents only, so this scans the array itself and hands each
element to ``json.JSONDecoder.raw_decode``: memory holds one element (a record) and the text read
ahead, never the whole array. An element is decoded again once more text has arrived only when
its failure could be the end of the buffer; the buffer at least doubles each time, so a long
element costs linear time.
"""
from __future__ import annotations

import json
from typing import Callable, Iterator

#: Characters read from the stream at a time.
READ_CHARS = 1 << 16
#: JSON's longest token that a buffer end can cut while leaving a valid prefix (a surrogate pair
#: escape is 12 characters): an element is accepted, or a failure believed, only this far from the end.
MARGIN = 16
_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


class _Scanner:
    """A read-ahead buffer over ``read`` with JSON's whitespace skipped on request."""

    def __init__(self, read: Callable[[int], str]) -> None:
        self.read = read
        self.text, self.at, self.eof = "", 0, False

    def fill(self, chars: int) -> bool:
        """Read until ``chars`` characters lie ahead or the stream ends; False when nothing was added."""
        self.text, self.at = self.text[self.at:], 0
        added = False
        while len(self.text) < chars and not self.eof:
            data = self.read(max(READ_CHARS, chars - len(self.text)))
            self.eof, added = not data, added or bool(data)
            self.text += data
        return added

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end of the stream)."""
        while True:
            while self.at < len(self.text) and self.text[self.at] in _SPACE:
                self.at += 1
            if self.at < len(self.text) or not self.fill(1):
                return self.text[self.at:self.at + 1]

    def fail(self, message: str) -> json.JSONDecodeError:
        return json.JSONDecodeError(message, self.text, self.at)

    def value(self) -> object:
        """Decode the JSON value that starts here, reading more text as long as it might help."""
        while True:
            ahead = len(self.text) - self.at
            try:
                value, end = _DECODER.raw_decode(self.text, self.at)
                if end + MARGIN <= len(self.text) or self.eof:
                    self.at = end
                    return value
            except json.JSONDecodeError as exc:
                cut = exc.pos + MARGIN > len(self.text) or exc.msg.startswith("Unterminated string")
                if self.eof or not cut:
                    raise
            self.fill(2 * ahead + MARGIN)


def array_items(read: Callable[[int], str]) -> Iterator[object]:
    """The elements of the JSON array that ``read(n)`` returns the text of, in order; raises
    json.JSONDecodeError when the text is no JSON array (elements before the fault are yielded)."""
    scanner = _Scanner(read)
    if scanner.peek() != "[":
        raise scanner.fail("Expecting '['")
    scanner.at += 1
    if scanner.peek() == "]":
        scanner.at += 1
    else:
        while True:
            scanner.peek()
            yield scanner.value()
            separator = scanner.peek()
            if separator not in (",", "]"):
                raise scanner.fail("Expecting ',' or ']' after an element")
            scanner.at += 1
            if separator == "]":
                break
    if scanner.peek():
        raise scanner.fail("Extra data after the array")
