"""Packing documents into fixed-length token rows, with an exact position after every row.

Documents are concatenated, each followed by the EOS id, and cut into rows of ``row_len`` tokens
(``max_seq_len + 1``: inputs are ``row[:-1]``, targets ``row[1:]``), so no token is padding. A
row may start in the middle of a document; the position yielded with each row says where the
next row starts (document index within its epoch + token offset), which is all the state needed
to resume packing exactly: the remainder is re-derived from the document, never stored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np


@dataclass(frozen=True)
class PackPosition:
    """Where the next row starts: ``offset`` tokens into document ``document`` of ``epoch``.

    The offset counts the document's tokens followed by its EOS, so ``offset == len(doc)`` means
    only the EOS is left.
    """

    epoch: int = 0
    document: int = 0
    offset: int = 0


def pack_rows(documents: Iterable[tuple[int, int, np.ndarray]], row_len: int, eos_id: int,
              start_offset: int = 0) -> Iterator[tuple[np.ndarray, PackPosition]]:
    """Rows of ``row_len`` int64 tokens from ``(epoch, document_index, tokens)`` triples.

    ``start_offset`` applies to the first document only (resuming mid-document). A trailing
    partial row is never yielded: the stream is either endless (training) or the caller accepts
    losing at most ``row_len - 1`` tokens (evaluation).
    """
    row = np.empty(row_len, dtype=np.int64)
    fill = 0
    offset = start_offset
    for epoch, index, tokens in documents:
        length = len(tokens) + 1  # + EOS
        while offset < length:
            take = min(row_len - fill, length - offset)
            body = min(take, len(tokens) - offset)
            if body > 0:
                row[fill:fill + body] = tokens[offset:offset + body]
            if body < take:  # the EOS is part of this slice
                row[fill + take - 1] = eos_id
            fill += take
            offset += take
            if fill == row_len:
                if offset < length:
                    yield row.copy(), PackPosition(epoch, index, offset)
                else:
                    yield row.copy(), PackPosition(epoch, index + 1, 0)
                fill = 0
        offset = 0
