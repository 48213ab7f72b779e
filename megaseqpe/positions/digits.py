"""Positions as digit tokens (docs/method.md §1.1).

A position is an n-dimensional tuple of non-negative integers. Each coordinate is written in
base `b`, left-padded with the digit 0 to `max_digits` digits, and the per-dimension digit
strings are concatenated. Conversion is tensor arithmetic on the positions' own device.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def digits_needed(max_position: int, base: int = 10) -> int:
    """Digits that the largest encodable position, `max_position - 1`, needs in `base`."""
    if max_position < 1:
        raise ValueError(f"max_position must be at least 1, got {max_position}")
    largest, digits = max_position - 1, 1
    while largest >= base:
        largest //= base
        digits += 1
    return digits


def check_encodable(positions: torch.Tensor, max_digits: int, base: int = 10) -> None:
    """Raise a ValueError naming the first position that `max_digits` digits cannot write."""
    check_all_encodable([positions], max_digits, base)


def _check_kinds(position_tensors: Sequence[torch.Tensor], base: int) -> None:
    for positions in position_tensors:
        if positions.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"positions must be an integer tensor, got {positions.dtype}")
    if base < 2:
        raise ValueError(f"base must be at least 2, got {base}")


def check_all_encodable(position_tensors: Sequence[torch.Tensor], max_digits: int, base: int = 10) -> None:
    """`check_encodable` for several tensors with ONE host sync when every position is encodable;
    otherwise the error names the first bad position of the first tensor holding one."""
    _check_kinds(position_tensors, base)
    limit = base ** max_digits
    outside = [(positions < 0) | (positions >= limit) for positions in position_tensors]
    if not bool(torch.stack([bad.any() for bad in outside]).any()):
        return
    positions, bad = next((p, bad) for p, bad in zip(position_tensors, outside) if bool(bad.any()))
    index = bad.nonzero()[0].tolist()
    where = tuple(index[:-1])
    position = tuple(positions[where].tolist()) if positions.dim() > 1 else positions.tolist()
    raise ValueError(
        f"position {position} (at index {where}) cannot be written with {max_digits} base-{base} "
        f"digits: encodable coordinates are 0..{limit - 1}")


class DeferredRangeCheck:
    """`check_all_encodable` that adds no host sync of its own to a step whose caller synchronises
    anyway (SeqPE's `torch.unique`): the overall min and max are copied to the host, without waiting,
    when it is made, and read by `finish()` after that sync, when the copy is long done. Only a
    failing check goes on to `check_all_encodable`, whose error names the position."""

    def __init__(self, position_tensors: Sequence[torch.Tensor], coordinates: torch.Tensor, max_digits: int,
                 base: int = 10) -> None:
        """`coordinates`: every coordinate of `position_tensors` in one tensor, as the caller keys them."""
        _check_kinds(position_tensors, base)
        self.position_tensors, self.max_digits, self.base = position_tensors, max_digits, base
        self._bounds: Optional[torch.Tensor] = None
        self._copied: Optional[torch.cuda.Event] = None
        if coordinates.numel():
            self._bounds = torch.stack([coordinates.amin(), coordinates.amax()]).to("cpu", non_blocking=True)
            if coordinates.is_cuda:  # a non-blocking copy to the host: finish() must know it has landed
                self._copied = torch.cuda.Event()
                self._copied.record()

    def finish(self) -> None:
        """Raise the ValueError of `check_all_encodable` if any position is out of range."""
        if self._bounds is None:
            return
        if self._copied is not None:
            self._copied.synchronize()  # already complete after the caller's sync: no wait
        low, high = self._bounds.tolist()
        if low < 0 or high >= self.base ** self.max_digits:
            check_all_encodable(self.position_tensors, self.max_digits, self.base)


def to_digits(positions: torch.Tensor, max_digits: int, base: int = 10, *,
              checked: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Write positions `[..., n_dims]` (int64) as digits `[..., n_dims * max_digits]`.

    Returns `(digits, pad_mask)`; `pad_mask` is 1 on significant digits and 0 on the
    left padding (the last digit always counts, so 0 is written `0 ... 0` with mask `0 ... 1`).
    A position that needs more than `max_digits` digits raises a ValueError naming it:
    it cannot be represented, and wrapping or clamping would silently alias two positions.
    `checked=True` skips that check (and its host sync) for positions the caller has checked.
    """
    if not checked:
        check_encodable(positions, max_digits, base)
    powers = base ** torch.arange(max_digits - 1, -1, -1, device=positions.device, dtype=torch.int64)
    value = positions.to(torch.int64).unsqueeze(-1)  # [..., n_dims, 1]
    digits = torch.div(value, powers, rounding_mode="floor") % base
    pad_mask = value >= powers
    pad_mask[..., -1] = True
    return digits.flatten(-2), pad_mask.flatten(-2).to(torch.int64)
