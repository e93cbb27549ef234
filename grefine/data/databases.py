"""The databases of G-Refine's evaluation (§4.1, Tables 2-5) as plain records.

``load_database(name, root)`` reads a database's metadata as its public release ships it and
returns a :class:`Database`: a sized, iterable collection of :class:`DatabaseRecord` (``name``,
``image_path``, ``prompt``, ``mos``, ``split``). ``root`` is the unpacked download: every image
is found by its file name anywhere under it (the archives unpack into folders whose names vary),
and so are the metadata files. A listed image that is not there, a row without a prompt, and a
second image of an already seen name are skipped and reported (count and first names, as a
:class:`SkippedRecordsWarning` and in :attr:`Database.skipped`), never a crash. A split whose
metadata is absent is simply not there; ``split=None`` takes every split found.

========== =========================================================== ================
name       metadata (splits)                                           prompt
========== =========================================================== ================
agiqa3k    ``data.csv``: ``name,prompt,adj1,adj2,style,mos_quality,    ``prompt`` (holds
           std_quality,mos_align,std_align`` (2,982 rows; ``all``)     the adj and style)
agiqa1k    ``AIGC_MOS_Zscore.xlsx``: ``Image,Prompt,MOS`` (1,080;      ``Prompt``
           ``all``)
aigiqa20k  ``info_train``, ``info_val``, ``info_test`` as ``.csv`` or  ``prompt``
           ``.xlsx``: ``name,prompt[,mos]`` (14,000 / 2,000 / 4,000;
           ``train``, ``val``, ``test``); images ``{Model}_{NNNN}.png``
diffusiondb ``metadata.parquet`` and/or ``part-NNNNNN/part-NNNNNN.json``  ``prompt`` / ``p``
           (``{file name: {"p", "se", "c", "st", "sa"}}``) for the PNGs
           of DiffusionDB 2M (``2m``); ``metadata-large.parquet``
           and/or the part JSONs of the WebPs of DiffusionDB Large
           (``large``)
genimage   none: ``<generator>/<archive folder>/{train,val}/{ai,nature}/`` "a photo of a
           (``train``, ``val``); only ``ai/`` images are generated     {class}"
========== =========================================================== ================

``mos`` holds the database's score columns under their own names (``mos_quality``, ...,
``MOS``, ``mos``; empty for DiffusionDB and GenImage). GenImage's prompt names the ImageNet class
whose index starts the file name (:func:`genimage_class_index`); the names are those open_clip
ships (``open_clip.IMAGENET_CLASSNAMES``). A GenImage file whose class cannot be read becomes a
record with ``error`` set (and no prompt), so that a run reports it as a failed row.

The paper refines 3,000 images sampled from DiffusionDB and from GenImage, and AGIQA-1K/3K
whole: ``limit`` / :meth:`Database.sample` take a reproducible sample (see there).

Registry: :data:`DATABASES` maps a name to a :class:`DatabaseSpec` (its splits, what its
metadata files are, and a reader); add an entry to load a database of your own by name.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Union

from tqdm.auto import tqdm

from grefine.image_io import IMAGE_SUFFIXES


class DatabaseError(ValueError):
    """A database cannot be read: unknown name or split, a root without its metadata, or a
    metadata file in an unexpected format. The message names what was looked for."""


class SkippedRecordsWarning(UserWarning):
    """Some listed records were skipped (missing image, no prompt, duplicate name)."""


@dataclass(frozen=True)
class DatabaseRecord:
    """One image of a database.

    Attributes:
        name: the image's file name, unique within the database (``results.csv``'s key).
        image_path: where the image was found under the root.
        prompt: the generation prompt ("" only on an error record).
        mos: the database's score columns for this image (empty when it has none).
        split: the split the image is listed in (``train``, ``all``, ...).
        error: why this record cannot be refined (e.g. a GenImage class that cannot be read);
            empty for a usable record.
    """

    name: str
    image_path: Optional[Path]
    prompt: str
    mos: dict[str, float] = field(default_factory=dict)
    split: str = ""
    error: str = ""


@dataclass
class Database(Sequence[DatabaseRecord]):
    """The records of one database, in a fixed order (splits in the database's order, names
    sorted within a split), with what was skipped: ``skipped`` maps a reason to the names."""

    name: str
    root: Path
    records: list[DatabaseRecord]
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[DatabaseRecord]:
        return iter(self.records)

    def __getitem__(self, index):
        return self.records[index]

    @property
    def splits(self) -> list[str]:
        """The splits present, in the database's order."""
        return list(dict.fromkeys(record.split for record in self.records))

    def sample(self, n: int, seed: int = 0) -> Database:
        """``n`` records chosen reproducibly by ``seed`` (all of them when ``n ≥ len``), kept
        in the database's order: the ``n`` whose ``sha256(f"{seed}/{name}")`` is smallest.
        A record's draw depends only on its name and the seed — not on the Python or NumPy
        version, nor on which other images are present — so every copy of a database ranks the
        images it holds the same way, and a full copy always gives the same sample."""
        if n < 1:
            raise DatabaseError(f"a sample needs at least one image, got n={n}")
        if n >= len(self.records):
            return replace(self, records=list(self.records))

        def draw(record: DatabaseRecord) -> str:
            return hashlib.sha256(f"{seed}/{record.name}".encode()).hexdigest()

        chosen = {record.name for record in sorted(self.records, key=draw)[:n]}
        return replace(self, records=[record for record in self.records if record.name in chosen])

    def report(self, first: int = 5) -> list[str]:
        """One line per kind of skipped or failed record: count and the first names."""
        lines = [
            f"{self.name}: {len(names)} {reason} under {self.root}, skipped (first: {', '.join(names[:first])})"
            for reason, names in self.skipped.items()
        ]
        errors = [record.name for record in self.records if record.error]
        if errors:
            lines.append(
                f"{self.name}: {len(errors)} record(s) that cannot be refined, kept as error rows "
                f"(first: {', '.join(errors[:first])})"
            )
        return lines


class FileIndex:
    """Every file under ``root`` by file name, from one walk (``__MACOSX`` folders and ``._``
    files of macOS archives left out). About 100 bytes per file."""

    def __init__(self, root: Path, *, progress: bool = False) -> None:
        self.root = root
        self._folders: dict[str, Union[str, list[str]]] = {}
        walk = tqdm(os.walk(root), desc=f"indexing {root}", unit=" folders", disable=not progress)
        for folder, subfolders, files in walk:
            subfolders[:] = sorted(name for name in subfolders if name != "__MACOSX")
            for name in files:
                if name.startswith("._"):
                    continue
                seen = self._folders.get(name)
                if seen is None:
                    self._folders[name] = folder
                else:
                    self._folders[name] = [*([seen] if isinstance(seen, str) else seen), folder]

    def paths(self, name: str) -> list[Path]:
        """Every file called ``name``, shallowest first."""
        seen = self._folders.get(name)
        folders = [] if seen is None else [seen] if isinstance(seen, str) else seen
        return sorted((Path(folder) / name for folder in folders), key=lambda p: (len(p.parts), str(p)))

    def find(self, name: str) -> Optional[Path]:
        """The shallowest file called ``name`` (a metadata file), or None."""
        found = self.paths(name)
        return found[0] if found else None

    def matching(self, pattern: str) -> list[Path]:
        """Every file whose name fully matches the regular expression ``pattern``, sorted."""
        regex = re.compile(pattern)
        return sorted(path for name in self._folders if regex.fullmatch(name) for path in self.paths(name))

    def image(self, name: str, split: str = "") -> Optional[Path]:
        """The image listed as ``name`` (with its suffix, or without: then any image suffix);
        among several, one inside a folder called ``split``, else the shallowest."""
        candidates = self.paths(name)
        if not candidates and Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            candidates = [p for suffix in IMAGE_SUFFIXES for case in (suffix, suffix.upper()) for p in self.paths(name + case)]
        in_split = [path for path in candidates if split and split in path.parent.parts]
        return (in_split or candidates or [None])[0]

    def images_under(self, parent: str, grandparent: str) -> list[Path]:
        """Every image file whose folder is ``parent`` inside a folder ``grandparent``, sorted."""
        found = []
        for name, seen in self._folders.items():
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            for folder in [seen] if isinstance(seen, str) else seen:
                path = Path(folder)
                if path.name == parent and path.parent.name == grandparent:
                    found.append(path / name)
        return sorted(found)


Reader = Callable[[FileIndex, str], Optional[list[DatabaseRecord]]]
"""Reads one split: its records (``image_path`` None = to be found by name), or None when the
split's metadata is not under the root."""


@dataclass(frozen=True)
class DatabaseSpec:
    """How to read a database.

    Attributes:
        title: its name in the literature (``AGIQA-3K``).
        metadata: split → what its metadata is (file names, for the error messages); the keys,
            in order, are the database's splits.
        read: the :data:`Reader`.
    """

    title: str
    metadata: dict[str, str]
    read: Reader

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.metadata)


def load_database(
    name: str,
    root: Union[str, os.PathLike],
    *,
    split: Union[str, Sequence[str], None] = None,
    match: Union[str, Sequence[str], None] = None,
    limit: Optional[int] = None,
    seed: int = 0,
    progress: bool = False,
) -> Database:
    """Read database ``name`` (see :data:`DATABASES`) from its unpacked download ``root``.

    Args:
        split: one split, several, or None for every split whose metadata is found.
        match: keep only records whose name matches one of these shell patterns (``fnmatch``,
            case-sensitive; e.g. ``"SD1.5_*"``: one generator of AIGIQA-20K), before sampling.
        limit: keep a reproducible sample of this many records (:meth:`Database.sample`).
        seed: the sample's seed.
        progress: show a progress bar while indexing ``root``.

    Raises:
        DatabaseError: unknown name or split, ``root`` not a folder, no metadata of a requested
            split (or of any split) under ``root``, or a metadata file without its columns.
    """
    spec = _spec(name)
    root = Path(root)
    if not root.is_dir():
        raise DatabaseError(f"{name}: root {root} is not a folder. Point it at the unpacked download of {spec.title}.")
    splits = _requested_splits(name, spec, split)
    index = FileIndex(root, progress=progress)
    listed: list[DatabaseRecord] = []
    found = False
    for one in splits:
        records = spec.read(index, one)
        if records is None and split is not None:
            raise DatabaseError(f"{name}: split {one!r} not found under {root}: looked for {spec.metadata[one]}.")
        found = found or records is not None
        listed += sorted(records or [], key=lambda record: record.name)
    if not found:
        looked_for = "; ".join(f"{one}: {what}" for one, what in spec.metadata.items())
        raise DatabaseError(f"{name}: no {spec.title} metadata under {root}; looked for {looked_for}.")
    if match is not None:
        listed = _matching(name, listed, [match] if isinstance(match, str) else list(match))
    database = _locate(name, root, listed, index)
    for line in database.report():
        warnings.warn(line, SkippedRecordsWarning, stacklevel=2)
    return database if limit is None else database.sample(limit, seed)


def _matching(name: str, records: list[DatabaseRecord], patterns: list[str]) -> list[DatabaseRecord]:
    """The records whose name matches a pattern; none matching is an error showing some names."""
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise DatabaseError(f"{name}: match needs non-empty name patterns (e.g. 'SD1.5_*'), got {patterns!r}.")
    kept = [record for record in records if any(fnmatch.fnmatchcase(record.name, p) for p in patterns)]
    if records and not kept:
        examples = ", ".join(record.name for record in records[:3])
        raise DatabaseError(f"{name}: no record name matches {', '.join(patterns)} (names look like: {examples}); patterns are case-sensitive.")
    return kept


def list_databases() -> list[str]:
    """The names :func:`load_database` accepts."""
    return sorted(DATABASES)


def _spec(name: str) -> DatabaseSpec:
    if name not in DATABASES:
        raise DatabaseError(f"unknown database {name!r}; known databases: {', '.join(list_databases())}")
    return DATABASES[name]


def _requested_splits(name: str, spec: DatabaseSpec, split: Union[str, Sequence[str], None]) -> tuple[str, ...]:
    requested = spec.splits if split is None else (split,) if isinstance(split, str) else tuple(split)
    unknown = [one for one in requested if one not in spec.metadata]
    if unknown or not requested:
        raise DatabaseError(f"{name}: unknown split(s) {unknown or requested}; its splits are {', '.join(spec.splits)}")
    return requested


def _locate(name: str, root: Path, listed: list[DatabaseRecord], index: FileIndex) -> Database:
    """Find each listed image under the root; skip (and remember) the unusable records."""
    records: list[DatabaseRecord] = []
    skipped: dict[str, list[str]] = {}
    seen: set[str] = set()
    for record in listed:
        reason = ""
        if not record.prompt.strip() and not record.error:
            reason = "listed row(s) without a prompt"
        elif record.image_path is None:
            path = index.image(record.name, record.split)
            if path is None:
                reason = "listed image(s) not found"
            else:
                record = replace(record, image_path=path, name=path.name)
        if not reason and record.name in seen:
            reason = "duplicate image name(s)"
        if reason:
            skipped.setdefault(reason, []).append(record.name)
            continue
        seen.add(record.name)
        records.append(record)
    return Database(name, root, records, skipped)


# ------------------------------------------------------------------------- reading tables


def _read_table(path: Path, columns: Sequence[str] = ()):
    """A CSV, XLSX or Parquet file as a pandas frame of strings (empty cells: "")."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        elif suffix in (".xlsx", ".xls"):
            frame = pd.read_excel(path, dtype=str)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path, columns=list(columns) or None)
        else:
            raise DatabaseError(f"{path}: expected a .csv, .xlsx or .parquet file")
    except (OSError, ValueError, ImportError) as err:
        if isinstance(err, DatabaseError):
            raise
        raise DatabaseError(f"{path}: cannot be read as a table ({type(err).__name__}: {err})") from err
    frame.columns = [str(column).strip() for column in frame.columns]
    return frame.fillna("").astype(str)


def _columns(frame, path: Path, required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, str]:
    """Map the expected column names to the file's (matched without regard to case)."""
    present = {column.lower(): column for column in frame.columns}
    missing = [name for name in required if name.lower() not in present]
    if missing:
        raise DatabaseError(
            f"{path}: expected columns {', '.join(required)}"
            f"{' (and ' + ', '.join(optional) + ')' if optional else ''}; found {', '.join(frame.columns)}"
        )
    return {name: present[name.lower()] for name in (*required, *optional) if name.lower() in present}


def _scores(row, columns: dict[str, str], names: Sequence[str]) -> dict[str, float]:
    scores = {}
    for name in names:
        if name in columns:
            try:
                scores[columns[name]] = float(row[columns[name]])
            except ValueError:
                continue  # an empty or non-numeric cell is no score
    return scores


def _table_records(path: Path, split: str, name_col: str, prompt_col: str, score_cols: Sequence[str]) -> list[DatabaseRecord]:
    """Records of one metadata table: file name, prompt and scores."""
    frame = _read_table(path)
    columns = _columns(frame, path, (name_col, prompt_col), score_cols)
    return [
        DatabaseRecord(row[columns[name_col]].strip(), None, row[columns[prompt_col]].strip(), _scores(row, columns, score_cols), split)
        for row in frame.to_dict("records")
    ]


# ----------------------------------------------------------------------------- AGIQA-3K


AGIQA3K_SCORES = ("mos_quality", "std_quality", "mos_align", "std_align")


def _read_agiqa3k(index: FileIndex, split: str) -> Optional[list[DatabaseRecord]]:
    """AGIQA-3K's ``prompt`` column is the whole prompt the image was generated from: the
    authors composed it as ``<subject>, <adj1>, <adj2>, <style>`` (empty ones left out) and
    list the modifiers again in ``adj1``, ``adj2``, ``style`` (the README: "The two adj in the
    prompt", "The style in the prompt"). In the released data.csv every non-empty modifier of
    all 2,982 rows is inside its ``prompt`` in that order, so the prompt is taken as is
    (appending the modifiers would repeat them)."""
    path = index.find("data.csv")
    return None if path is None else _table_records(path, split, "name", "prompt", AGIQA3K_SCORES)


# ----------------------------------------------------------------------------- AGIQA-1K


def _read_agiqa1k(index: FileIndex, split: str) -> Optional[list[DatabaseRecord]]:
    path = index.find("AIGC_MOS_Zscore.xlsx")
    return None if path is None else _table_records(path, split, "Image", "Prompt", ("MOS",))


# --------------------------------------------------------------------------- AIGIQA-20K


def _read_aigiqa20k(index: FileIndex, split: str) -> Optional[list[DatabaseRecord]]:
    path = index.find(f"info_{split}.csv") or index.find(f"info_{split}.xlsx")
    return None if path is None else _table_records(path, split, "name", "prompt", ("mos",))


# -------------------------------------------------------------------------- DiffusionDB


DIFFUSIONDB_PART = r"part-\d{6}\.json"
_DIFFUSIONDB = {"2m": ("metadata.parquet", ".png"), "large": ("metadata-large.parquet", ".webp")}


def _read_diffusiondb(index: FileIndex, split: str) -> Optional[list[DatabaseRecord]]:
    """DiffusionDB 2M (PNG) or Large (WebP): the metadata table, and the part JSONs' entries
    for the images of that subset (told apart by their suffix); the JSON wins for an image in
    both (it sits next to the image)."""
    table_name, suffix = _DIFFUSIONDB[split]
    prompts: dict[str, str] = {}
    table = index.find(table_name)
    if table is not None:
        frame = _read_table(table, ("image_name", "prompt"))
        columns = _columns(frame, table, ("image_name", "prompt"))
        prompts.update(zip(frame[columns["image_name"]].str.strip(), frame[columns["prompt"]]))
    parts = index.matching(DIFFUSIONDB_PART)
    for part in parts:
        prompts.update((image, prompt) for image, prompt in _read_part(part).items() if image.lower().endswith(suffix))
    if table is None and not any(image.lower().endswith(suffix) for image in prompts):
        return None
    return [DatabaseRecord(image, None, prompt.strip(), {}, split) for image, prompt in prompts.items()]


def _read_part(path: Path) -> dict[str, str]:
    """``{image file name: prompt}`` of a DiffusionDB ``part-NNNNNN.json``."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return {str(image): str(entry.get("p") or "") for image, entry in entries.items()}
    except (OSError, ValueError, AttributeError) as err:
        raise DatabaseError(
            f"{path}: expected DiffusionDB's JSON object {{image file name: {{\"p\": prompt, \"se\": seed, ...}}}} ({err})"
        ) from err


# ----------------------------------------------------------------------------- GenImage


GENIMAGE_PROMPT = "a photo of a {}"
_GENIMAGE_NAME = re.compile(r"(?:^|_)(\d+)_([A-Za-z][A-Za-z0-9]*)_\d+$")


def genimage_class_index(file_name: str) -> int:
    """The ImageNet class index of a GenImage file: the number just before the generator tag
    (``033_sdv4_00134.png`` → 33).

    GenImage's generators name their images ``<class>_<tag>_<number>`` (ADM ``755_adm_178.PNG``,
    BigGAN ``<class>_biggan_<n>``, Midjourney ``308_midjourney_45``, Stable Diffusion 1.4/1.5
    ``658_sdv4_00176`` / ``583_sdv5_00060``, Wukong ``<class>_wukong_<n>``), except GLIDE and VQDM,
    which prefix their settings (``GLIDE_1000_200_03_302_glide_00186``,
    ``VQDM_1000_200_04_443_vqdm_00138``: class 302, 443); the rule reads all of them. The
    example names come from AI-GenBench's GenImage file list
    (github.com/srish01/AI-GenBench, ``dataset_creation/resources/validation_fake_file_ids.txt``);
    the BigGAN and Wukong patterns are the common one, not seen in that list.

    Raises:
        ValueError: the name does not follow the pattern, or the index is not below 1000.
    """
    match = _GENIMAGE_NAME.search(Path(file_name).stem)
    if match is None or int(match.group(1)) >= 1000:
        raise ValueError(
            f"cannot read the ImageNet class of {file_name!r}: GenImage names are "
            "'<class 0-999>_<generator>_<number>' (e.g. 033_sdv4_00134.png)"
        )
    return int(match.group(1))


def _read_genimage(index: FileIndex, split: str) -> Optional[list[DatabaseRecord]]:
    from open_clip import IMAGENET_CLASSNAMES

    paths = index.images_under("ai", split)
    if not paths:
        return None
    records = []
    for path in paths:
        try:
            prompt, error = GENIMAGE_PROMPT.format(IMAGENET_CLASSNAMES[genimage_class_index(path.name)]), ""
        except ValueError as err:
            prompt, error = "", str(err)
        records.append(DatabaseRecord(path.name, path, prompt, {}, split, error))
    return records


DATABASES: dict[str, DatabaseSpec] = {
    "agiqa3k": DatabaseSpec("AGIQA-3K", {"all": "data.csv"}, _read_agiqa3k),
    "agiqa1k": DatabaseSpec("AGIQA-1K", {"all": "AIGC_MOS_Zscore.xlsx"}, _read_agiqa1k),
    "aigiqa20k": DatabaseSpec(
        "AIGIQA-20K",
        {split: f"info_{split}.csv or info_{split}.xlsx" for split in ("train", "val", "test")},
        _read_aigiqa20k,
    ),
    "diffusiondb": DatabaseSpec(
        "DiffusionDB",
        {
            "2m": "metadata.parquet or part-NNNNNN/part-NNNNNN.json listing .png images",
            "large": "metadata-large.parquet or part-NNNNNN/part-NNNNNN.json listing .webp images",
        },
        _read_diffusiondb,
    ),
    "genimage": DatabaseSpec(
        "GenImage",
        {split: f"<generator>/<archive folder>/{split}/ai/ image folders" for split in ("train", "val")},
        _read_genimage,
    ),
}
"""The databases :func:`load_database` knows, by name. Add a :class:`DatabaseSpec` to load one
of your own: its reader gets the :class:`FileIndex` of the root and a split name, and returns
records whose ``image_path`` may be None (then the image is found by ``name``)."""
