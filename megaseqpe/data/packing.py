"""Packing documents into fixed-length token rows, with an exact position after every row.

Documents are concatenated, each followed by the EOS id, and cut into rows of ``row_len`` tokens
(``max_seq_len + 1``: inputs are ``row[:-1]``, targets ``row[1:]``), so no token is padding. A
row may start in the middle of a document; the position yielded with each row says where the
next row starts (document index within its epoch + token offset), which is all the state needed
to resume packing exactly: the remainder is re-derived from the document, never stored.

With document masking (``data.document_masking``) each document is also preceded by the BOS id,
when the tokenizer has one, and :func:`document_layout` reads the document boundaries back from
a row: the model then keeps each token's positions and attention inside its own document.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import torch


@dataclass(frozen=True)
class PackPosition:
    """Where the next row starts: ``offset`` tokens into document ``document`` of ``epoch``.

    The offset counts the document's packed form, ``[BOS] + tokens + EOS`` (BOS only when the
    packer was given one), so ``offset == len(doc) + 1`` with a BOS (``len(doc)`` without) means
    only the EOS is left.
    """

    epoch: int = 0
    document: int = 0
    offset: int = 0


def _fill(out: np.ndarray, tokens: np.ndarray, offset: int, head: int, bos_id: Optional[int], eos_id: int) -> None:
    """``out[:] = ([bos_id] * head + tokens + [eos_id])[offset:offset + len(out)]``, without
    building that concatenation: a document may hold a gigabyte of tokens."""
    filled = 0
    if offset < head:
        out[0] = bos_id
        filled = 1
    begin = offset + filled - head  # index into tokens of out[filled]
    body = min(len(out) - filled, len(tokens) - begin)
    if body > 0:
        out[filled:filled + body] = tokens[begin:begin + body]
        filled += body
    if filled < len(out):  # the EOS is part of this slice
        out[filled] = eos_id


def pack_rows(documents: Iterable[tuple[int, int, np.ndarray]], row_len: int, eos_id: int,
              start_offset: int = 0, bos_id: Optional[int] = None) -> Iterator[tuple[np.ndarray, PackPosition]]:
    """Rows of ``row_len`` int64 tokens from ``(epoch, document_index, tokens)`` triples.

    ``start_offset`` applies to the first document only (resuming mid-document). A trailing
    partial row is never yielded: the stream is either endless (training) or the caller accepts
    losing at most ``row_len - 1`` tokens (evaluation). ``bos_id`` (None: none) goes in front of
    every document; a resumed stream must be packed with the same ``bos_id`` as the saved one.
    """
    row = np.empty(row_len, dtype=np.int64)
    fill = 0
    offset = start_offset
    head = 0 if bos_id is None else 1
    for epoch, index, tokens in documents:
        length = head + len(tokens) + 1  # [BOS] + tokens + EOS
        while offset < length:
            take = min(row_len - fill, length - offset)
            _fill(row[fill:fill + take], tokens, offset, head, bos_id, eos_id)
            fill += take
            offset += take
            if fill == row_len:
                if offset < length:
                    yield row.copy(), PackPosition(epoch, index, offset)
                else:
                    yield row.copy(), PackPosition(epoch, index + 1, 0)
                fill = 0
        offset = 0


def document_layout(tokens: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token of packed rows `[B, N]`: (document id, position within the document), both `[B, N]`.

    A document starts at the first token of a row and at every token that follows an EOS (a BOS
    when the packer added one), so the layout needs nothing but the row. A row that starts in the
    middle of a document counts that document's positions from 0 too: the packer's offset is not
    in the batch, and without masking every row starts at position 0 as well.
    """
    starts = torch.zeros_like(tokens, dtype=torch.bool)
    starts[:, 1:] = tokens[:, :-1] == eos_id
    documents = starts.cumsum(1)
    index = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(1).values  # each token's document start
    return documents, index - first
