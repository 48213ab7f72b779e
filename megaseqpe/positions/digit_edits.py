"""Hard negatives for the contrastive objective: digit edits of a position (docs/method.md §2.2).

A position's digits are written without left padding (2-D: the coordinates' digit strings
concatenated); one to three random edits (insert, delete, swap or replace a digit) give a string
that LOOKS like the pivot's, which is then read back as a position (2-D: cut into one string per
coordinate at a random place). Such positions are usually far from the pivot: they teach the
encoder that similar digits do not mean nearby positions. Edits never create a leading zero and
never leave the encodable range, as in the authors' sampler.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

Digits = list[int]
_TRIES = 20  # attempts per edit and per neighbour: an edit can be impossible (e.g. insert into a full string)


def _leading_zero(digits: Digits) -> bool:
    return len(digits) > 1 and digits[0] == 0


def _insert(digits: Digits, rng: np.random.Generator, base: int, max_len: int) -> Optional[Digits]:
    if len(digits) >= max_len:
        return None
    at = int(rng.integers(0, len(digits) + 1))
    digit = int(rng.integers(1 if at == 0 else 0, base))
    return digits[:at] + [digit] + digits[at:]


def _delete(digits: Digits, rng: np.random.Generator, base: int, max_len: int) -> Optional[Digits]:
    if len(digits) <= 1:
        return None
    at = int(rng.integers(0, len(digits)))
    edited = digits[:at] + digits[at + 1:]
    return None if _leading_zero(edited) else edited


def _swap(digits: Digits, rng: np.random.Generator, base: int, max_len: int) -> Optional[Digits]:
    if len(digits) < 2:
        return None
    i, j = (int(k) for k in rng.choice(len(digits), size=2, replace=False))
    if digits[i] == digits[j]:
        return None
    edited = list(digits)
    edited[i], edited[j] = edited[j], edited[i]
    return None if _leading_zero(edited) else edited


def _replace(digits: Digits, rng: np.random.Generator, base: int, max_len: int) -> Optional[Digits]:
    at = int(rng.integers(0, len(digits)))
    digit = int(rng.integers(1 if at == 0 and len(digits) > 1 else 0, base))
    if digit == digits[at]:
        return None
    return digits[:at] + [digit] + digits[at + 1:]


_EDITS: tuple[Callable[..., Optional[Digits]], ...] = (_insert, _delete, _swap, _replace)


def to_digit_string(position: np.ndarray, base: int) -> Digits:
    """The coordinates' digits without left padding, concatenated: (5, 40) → [5, 4, 0]."""
    digits: Digits = []
    for coordinate in position.tolist():
        own = []
        while True:
            coordinate, digit = divmod(int(coordinate), base)
            own.insert(0, digit)
            if coordinate == 0:
                break
        digits += own
    return digits


def _read_back(digits: Digits, n_dims: int, max_digits: int, base: int, limit: int,
               rng: np.random.Generator) -> Optional[tuple[int, ...]]:
    """A position from an edited digit string: n-D strings are cut into one part per coordinate
    (each 1..max_digits digits) at random; None if no coordinate layout fits below `limit`."""
    digits = list(digits)
    while len(digits) < n_dims:  # too short to cut: pad with a 0 on a random side
        digits = [0] + digits if rng.random() < 0.5 else digits + [0]
    cuts = _random_cut(len(digits), n_dims, max_digits, rng)
    if cuts is None:
        return None
    parts = np.split(np.asarray(digits), cuts)
    coordinates = tuple(int(sum(int(d) * base ** k for k, d in enumerate(part[::-1]))) for part in parts)
    return coordinates if max(coordinates) < limit else None


def _random_cut(length: int, n_dims: int, max_digits: int, rng: np.random.Generator) -> Optional[list[int]]:
    for _ in range(_TRIES):
        cuts = sorted(int(c) for c in rng.choice(np.arange(1, length), size=n_dims - 1, replace=False)) \
            if n_dims > 1 else []
        sizes = np.diff([0, *cuts, length])
        if sizes.min() >= 1 and sizes.max() <= max_digits:
            return cuts
    return None


def _edited(digits: Digits, rng: np.random.Generator, base: int, max_len: int) -> Digits:
    """One to three successful random edits of `digits` in sequence."""
    for _ in range(int(rng.integers(1, 4))):
        for _ in range(_TRIES):
            edit = _EDITS[int(rng.integers(0, len(_EDITS)))]
            edited = edit(digits, rng, base, max_len)
            if edited is not None and edited != digits:
                digits = edited
                break
    return digits


def digit_edit_neighbours(pivot: np.ndarray, count: int, rng: np.random.Generator, *, base: int,
                          max_digits: int, limit: int) -> np.ndarray:
    """Up to `count` distinct positions `[k, n_dims]` whose digit strings are 1-3 edits of `pivot`'s,
    every coordinate in [0, limit), none equal to the pivot."""
    n_dims, pivot_key = len(pivot), tuple(pivot.tolist())
    source = to_digit_string(pivot, base)
    found: dict[tuple[int, ...], None] = {}
    for _ in range(_TRIES * max(count, 1)):
        if len(found) >= count:
            break
        position = _read_back(_edited(source, rng, base, n_dims * max_digits), n_dims, max_digits, base, limit, rng)
        if position is not None and position != pivot_key:
            found[position] = None
    return np.asarray(list(found), dtype=np.int64).reshape(-1, n_dims)
