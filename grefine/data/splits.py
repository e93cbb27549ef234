"""Seeded ratio splits for databases without official ones (AGIQA-1K, AGIQA-3K), in pyiqa's
convention: a ratio such as ``"802"`` (train 80 %, val 0 %, test 20 %), a seed (pyiqa's 123) and
a split index 1, 2, … (pyiqa ships ten), named ``ratio802_seed123_split_01``.

pyiqa's own splits are pre-computed files; these are grefine's, drawn by numpy from
(seed, split index) over the records sorted by name, so that they do not depend on the order in
which a loader lists the records.

:class:`SplitSpec` is the written form of a choice of records (the ``--split`` of
``scripts/evaluate_scores.py``): ``all``, one of a database's own splits (``test``), or a ratio
split ``RATIO:PHASE[:SEED[:INDEX]]`` (``802:test`` = the test part of ratio 802, seed 123,
split 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TypeVar, Union

import numpy as np

T = TypeVar("T")
PHASES = ("train", "val", "test")
PYIQA_SEED = 123
"""The seed of pyiqa's ratio splits."""


def parse_ratio(ratio: Union[str, Sequence[float]]) -> tuple[float, float, float]:
    """``"802"`` (three digits summing to 10) or three fractions summing to 1 → (train, val, test)."""
    if isinstance(ratio, str):
        if len(ratio) != 3 or not ratio.isdigit() or sum(int(c) for c in ratio) != 10:
            raise ValueError(f"ratio {ratio!r}: give three digits summing to 10 (tenths of train, val, test), e.g. '802'.")
        return tuple(int(c) / 10 for c in ratio)  # type: ignore[return-value]
    parts = tuple(float(r) for r in ratio)
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-9:
        raise ValueError(f"ratio {ratio!r}: give three fractions ≥ 0 (train, val, test) summing to 1.")
    return parts  # type: ignore[return-value]


def ratio_split(
    records: Sequence[T],
    ratio: Union[str, Sequence[float]] = "802",
    *,
    seed: int = PYIQA_SEED,
    split_index: int = 1,
    key: Callable[[T], str] = lambda record: record.name,  # type: ignore[attr-defined]
) -> dict[str, list[T]]:
    """Split ``records`` into ``train`` / ``val`` / ``test`` lists by ``ratio``; the same
    (records, ratio, seed, split_index) always give the same split. Sizes are rounded for train
    and val; test takes the rest.

    Raises:
        ValueError: a bad ratio, a split index below 1, or two records with the same name.
    """
    train, val, _ = parse_ratio(ratio)
    if split_index < 1:
        raise ValueError(f"split_index counts from 1 (pyiqa's convention), got {split_index}.")
    names = [key(record) for record in records]
    if len(set(names)) != len(names):
        raise ValueError("records have repeated names: a split needs one record per name.")
    ordered = [records[i] for i in np.argsort(names, kind="stable")]
    permutation = np.random.default_rng([seed, split_index]).permutation(len(ordered))
    n_train, n_val = round(train * len(ordered)), round(val * len(ordered))
    cuts = {"train": permutation[:n_train], "val": permutation[n_train:n_train + n_val], "test": permutation[n_train + n_val:]}
    return {phase: [ordered[i] for i in sorted(cuts[phase])] for phase in PHASES}


@dataclass(frozen=True)
class SplitSpec:
    """A choice of records: ``phase`` alone is ``all`` or a database's own split (``test``); with
    a ``ratio`` it is that part of :func:`ratio_split` over all the records (``seed``,
    ``index``). ``str()`` gives the written form back, :meth:`parse` reads it."""

    phase: str
    ratio: Optional[str] = None
    seed: int = PYIQA_SEED
    index: int = 1

    @classmethod
    def parse(cls, text: str) -> "SplitSpec":
        """``all``, a split name (``train``, ``test``, …) or ``RATIO:PHASE[:SEED[:INDEX]]``
        (``802:test``, ``721:val:123:2``).

        Raises:
            ValueError: naming the part that is wrong and the syntax.
        """
        syntax = "write all, a split name such as test, or RATIO:PHASE[:SEED[:INDEX]] such as 802:test"
        parts = text.strip().split(":")
        if len(parts) == 1:
            if not parts[0] or not parts[0].replace("_", "").isalnum():
                raise ValueError(f"split {text!r}: {syntax}.")
            return cls(parts[0])
        if len(parts) > 4:
            raise ValueError(f"split {text!r}: too many ':' parts; {syntax}.")
        ratio, phase, *rest = parts
        parse_ratio(ratio)
        if phase not in PHASES:
            raise ValueError(f"split {text!r}: the part after the ratio must be one of {', '.join(PHASES)}, got {phase!r}.")
        numbers = []
        for name, value, low in zip(("seed", "index"), rest, (0, 1)):
            if not value.isdigit() or int(value) < low:
                raise ValueError(f"split {text!r}: {name} must be a whole number ≥ {low}, got {value!r}; {syntax}.")
            numbers.append(int(value))
        return cls(phase, ratio, *numbers)

    def __str__(self) -> str:
        if self.ratio is None:
            return self.phase
        return f"{self.ratio}:{self.phase}:{self.seed}:{self.index}"

    def select(self, records: Sequence[T], key: Callable[[T], str] = lambda record: record.name) -> list[T]:  # type: ignore[attr-defined]
        """This spec's part of ``records`` (all of them without a ratio: the caller loaded the split)."""
        if self.ratio is None:
            return list(records)
        return ratio_split(records, self.ratio, seed=self.seed, split_index=self.index, key=key)[self.phase]
