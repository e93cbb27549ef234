"""The human scores of the rated databases (paper §4.4, Tables 6-7): which MOS column a
perceptual and an alignment scorer is compared with, and :func:`load_rated`, the records of one
split with those columns, ready for :func:`grefine.eval.score_eval.evaluate_scores`.

========== ====================== ===================== ===================================
database   perceptual MOS         alignment MOS         default split
========== ====================== ===================== ===================================
agiqa3k    ``mos_quality``        ``mos_align``         ``all`` (the paper: the full set)
agiqa1k    ``MOS`` (one overall)  ``MOS``               ``all``
aigiqa20k  ``mos`` (one overall)  ``mos``               ``test`` (the paper: the NTIRE 2024
                                                        test split)
========== ====================== ===================== ===================================

AIGIQA-20K and AGIQA-1K have one overall MOS, used for both kinds of scorer: the paper's
Tables 6 and 7 compare the perceptual and the alignment indicators alike with AIGIQA-20K's one
MOS. A column is matched whatever the case of its name in the metadata and is stored under the
name above. The NTIRE 2024 challenge withheld the test MOS of AIGIQA-20K, so a copy whose
``info_test`` has no ``mos`` column cannot be evaluated on ``test`` (:class:`DatabaseError`
saying so); every image of the chosen split must have its MOS.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Union

from grefine.data.databases import DATABASES, Database, DatabaseError, DatabaseRecord, load_database
from grefine.data.splits import SplitSpec


@dataclass(frozen=True)
class MOSColumns:
    """A rated database: its ``perceptual`` and ``alignment`` MOS columns (the same one when it
    has one overall MOS), the split evaluated by default and a hint for a split without MOS."""

    perceptual: str
    alignment: str
    default_split: str = "all"
    missing_hint: str = ""


MOS_COLUMNS: dict[str, MOSColumns] = {
    "agiqa3k": MOSColumns("mos_quality", "mos_align"),
    "agiqa1k": MOSColumns("MOS", "MOS"),
    "aigiqa20k": MOSColumns(
        "mos",
        "mos",
        default_split="test",
        missing_hint=(
            "the NTIRE 2024 challenge release withholds the test MOS; use a copy whose info_test has a mos column, "
            "or evaluate on --split val"
        ),
    ),
}
"""The databases with human MOS, by :func:`~grefine.data.databases.load_database` name."""


@dataclass(frozen=True)
class RatedSplit:
    """The records of one split of a rated database (``mos`` holding exactly the columns
    ``perceptual`` and ``alignment``), ``split`` in its written form, and the loaded
    ``database`` (for its report of skipped records)."""

    database: Database
    split: str
    records: list[DatabaseRecord]
    perceptual: str
    alignment: str


def load_rated(
    name: str, root: Union[str, os.PathLike], split: Union[str, SplitSpec, None] = None, *, progress: bool = False
) -> RatedSplit:
    """The records of ``split`` (default: the database's, see the table above) of database
    ``name`` under ``root``, each with its perceptual and alignment MOS.

    Raises:
        DatabaseError: a database without MOS, a bad or unknown split, a root without the
            metadata, an empty split, or images of the split without their MOS.
    """
    if name not in MOS_COLUMNS:
        problem = f"database {name!r} has no human MOS to compare scores with" if name in DATABASES else f"unknown database {name!r}"
        raise DatabaseError(f"{problem}; rated databases: {', '.join(sorted(MOS_COLUMNS))}.")
    columns = MOS_COLUMNS[name]
    try:
        spec = split if isinstance(split, SplitSpec) else SplitSpec.parse(split or columns.default_split)
    except ValueError as err:
        raise DatabaseError(f"{name}: {err}") from None
    own = DATABASES[name].splits
    if spec.ratio is None and spec.phase != "all" and spec.phase not in own:
        raise DatabaseError(
            f"{name} has no split {spec.phase!r} (its splits: all{', ' + ', '.join(own) if own != ('all',) else ''}); "
            f"evaluate on all, or on a seeded ratio split such as 802:{spec.phase}."
        )
    one = spec.phase if spec.ratio is None and spec.phase != "all" else None
    database = load_database(name, root, split=one, progress=progress)
    records = spec.select(database.records)
    if not records:
        raise DatabaseError(f"{name}: split {spec} holds no image under {root}.")
    wanted = list(dict.fromkeys((columns.perceptual, columns.alignment)))
    rated = [replace(record, mos=_scores(record, wanted)) for record in records]
    for column in wanted:
        _check_column(name, spec, column, rated, columns.missing_hint)
    return RatedSplit(database, str(spec), rated, columns.perceptual, columns.alignment)


def _scores(record: DatabaseRecord, columns: list[str]) -> dict[str, float]:
    """The record's MOS under the canonical column names (matched without regard to case)."""
    by_lower = {key.lower(): value for key, value in record.mos.items()}
    return {column: by_lower[column.lower()] for column in columns if column.lower() in by_lower}


def _check_column(name: str, spec: SplitSpec, column: str, records: list[DatabaseRecord], hint: str) -> None:
    missing = [record.name for record in records if column not in record.mos]
    if not missing:
        return
    if len(missing) == len(records):
        raise DatabaseError(
            f"{name}: split {spec} has no MOS column {column!r} in its metadata{' (' + hint + ')' if hint else ''}."
        )
    raise DatabaseError(
        f"{name}: {len(missing)} of the {len(records)} images of split {spec} have no {column} "
        f"(first: {', '.join(missing[:5])}); fill in their scores or choose another split."
    )
