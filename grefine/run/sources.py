"""Work items — (name, image, prompt) — and where they come from.

The runner (:func:`grefine.run.runner.run_items`) refines a sequence of :class:`WorkItem`. This module
builds them from a folder of images (:func:`scan_folder`), with prompts from a CSV/JSONL file
(:func:`read_prompts`) or sidecar ``<stem>.txt`` files. Other sources (e.g. a benchmark database
whose images live in nested folders and whose prompts come from its metadata) build ``WorkItem``
objects of their own; a name may then be a relative POSIX path (``sub/x.png``), mirrored under
the output folder.

Everything here is read strictly, before any model loads: text must decode (UTF-8 with its BOM
removed, or the encoding given), CSV rows must have as many fields as the header, JSON prompts
must be strings, names must be unique. A failure is a :class:`~grefine.errors.RunInputError`
(:class:`PromptSourceError` for prompts) naming the file, the line and the fix.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from grefine.errors import RunInputError, printable
from grefine.image_io import IMAGE_SUFFIXES

_ENCODING_HINT = "Save it as UTF-8, or name its encoding with --prompt-encoding (e.g. cp1252)."
_JSON_KINDS = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}


class PromptSourceError(RunInputError):
    """A prompts file or sidecar cannot be used; the message names it, the line and the fix."""


@dataclass(frozen=True)
class WorkItem:
    """One image to refine.

    Attributes:
        name: unique within a run; a file name or a relative POSIX path. The refined image is
            written to ``<output>/<name>`` and the row of ``results.csv`` is keyed by it.
        image: the input file (never written to).
        prompt: its prompt; None when none was found, and then ``error`` says why: the item
            becomes a failed row of ``results.csv`` without running the models.
    """

    name: str
    image: Path
    prompt: Optional[str]
    error: str = ""


@dataclass
class FolderScan:
    """The work items of a folder, and what was left out: ``ignored`` maps a file name to why
    it is not an image to refine; ``unused_prompts`` are prompt names that match no image."""

    items: list[WorkItem]
    ignored: dict[str, str] = field(default_factory=dict)
    unused_prompts: list[str] = field(default_factory=list)


def check_encoding(encoding: Optional[str]) -> None:
    """Refuse an encoding name Python does not know (``--prompt-encoding``)."""
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError as err:
            raise RunInputError(f"--prompt-encoding {encoding}: unknown encoding; use e.g. utf-8, cp1252, latin-1.") from err


def read_text(path: Path, encoding: Optional[str] = None) -> str:
    """The text of a prompts file or sidecar, decoded strictly: UTF-8 (a leading BOM removed)
    unless ``encoding`` is given; undecodable bytes raise :class:`PromptSourceError` naming the
    file and the line."""
    check_encoding(encoding)
    codec = encoding or "utf-8"
    if codecs.lookup(codec).name == "utf-8":
        codec = "utf-8-sig"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PromptSourceError(f"{path}: cannot be read ({err.strerror}).") from err
    try:
        return data.decode(codec)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise PromptSourceError(
            f"{path}:{line}: not valid {encoding or 'UTF-8'} text (byte 0x{data[err.start]:02x}). {_ENCODING_HINT}"
        ) from err


def read_prompts(path: Path, encoding: Optional[str] = None) -> dict[str, str]:
    """Prompts by name from a CSV (a header with ``name`` and ``prompt`` columns; other columns
    are allowed) or a JSONL file (``.jsonl``/``.json``: one ``{"name": ..., "prompt": ...}``
    object per line). Names may carry the extension or not. Prompts are stripped; an empty one
    counts as missing. Refused, naming the line: undecodable text, a row with more or fewer
    fields than the header (an unquoted comma), a non-string JSON name or prompt, a name given twice."""
    if not path.is_file():
        raise PromptSourceError(f"--prompts {path}: no such file.")
    text = read_text(path, encoding)
    records = _jsonl_records(path, text) if path.suffix.lower() in (".jsonl", ".json") else _csv_records(path, text)
    prompts: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line, name, prompt in records:
        if not name:
            raise PromptSourceError(f"{path}:{line}: empty name; give the image's file name.")
        if name in lines:
            raise PromptSourceError(f"{path}: {name!r} is given twice (lines {lines[name]} and {line}); keep one.")
        lines[name] = line
        prompts[name] = prompt.strip()
    return prompts


def _csv_records(path: Path, text: str) -> Iterator[tuple[int, str, str]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [column.strip() for column in next(reader, [])]
        if not {"name", "prompt"} <= set(header):
            raise PromptSourceError(f"{path}: a CSV needs a header with 'name' and 'prompt' columns, got {header}.")
        name_at, prompt_at = header.index("name"), header.index("prompt")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise PromptSourceError(
                    f"{path}:{reader.line_num}: {len(row)} fields, but the header has {len(header)}. "
                    'Quote a prompt that contains commas ("a cat, a dog") and give every column a value.'
                )
            yield reader.line_num, row[name_at].strip(), row[prompt_at]
    except csv.Error as err:
        raise PromptSourceError(f"{path}:{reader.line_num}: not valid CSV ({err}). Check its quotes.") from err


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[int, str, str]]:
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may sit in a JSON string
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptSourceError(
                f'{path}:{number}: not JSON ({err.msg}). Write one object per line: {{"name": "a.png", "prompt": "..."}}.'
            ) from err
        if not isinstance(record, dict) or not {"name", "prompt"} <= set(record):
            raise PromptSourceError(f'{path}:{number}: expected an object with "name" and "prompt", got {line.strip()[:80]}.')
        for key in ("name", "prompt"):
            if not isinstance(record[key], str):
                kind = _JSON_KINDS.get(type(record[key]), type(record[key]).__name__)
                raise PromptSourceError(
                    f'{path}:{number}: "{key}" must be a string, got {json.dumps(record[key])} ({kind}). Write it in double quotes.'
                )
        yield number, record["name"].strip(), record["prompt"]


def list_images(folder: Path) -> tuple[list[Path], dict[str, str]]:
    """The supported images directly inside ``folder`` (sorted), and every other entry with why it
    is ignored. Raises :class:`~grefine.errors.RunInputError` when ``folder`` is not a readable
    folder or holds no image (the message lists what was ignored and why)."""
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "no such folder"
        raise RunInputError(f"--input {printable(str(folder))}: {state}. Give the folder that holds the images.")
    images, ignored = [], {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        raise RunInputError(f"--input {printable(str(folder))}: cannot be listed ({err.strerror}).") from err
    for entry in entries:
        if entry.is_dir():
            ignored[entry.name + "/"] = "a folder (only images directly inside --input are used)"
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            images.append(entry)
        else:
            ignored[entry.name] = "a text file: a sidecar prompt needs an image of the same stem" if entry.suffix.lower() == ".txt" else "not a supported image type"
    if not images:
        raise RunInputError(f"--input {printable(str(folder))}: no image found. {_ignored_summary(ignored)}")
    return images, ignored


def scan_folder(folder: Path, prompts_file: Optional[Path] = None, encoding: Optional[str] = None) -> FolderScan:
    """The images directly inside ``folder`` (sorted by name) as work items, each with its prompt:
    from ``prompts_file`` (by file name, then by stem), else from a sidecar ``<stem>.txt``.
    Names that are not valid UTF-8 are kept (Python's surrogate escapes) and may be written in
    the prompts file as ``results.csv`` shows them (``caf\\xe9.png``).

    Raises :class:`~grefine.errors.RunInputError` when the folder is missing or holds no image
    (the message lists what was ignored and why), and :class:`PromptSourceError` for a prompts
    file or sidecar that cannot be read.
    """
    prompts = read_prompts(prompts_file, encoding) if prompts_file is not None else {}
    images, ignored = list_images(folder)
    used: set[str] = set()
    items = [_folder_item(path, prompts, prompts_file, encoding, used) for path in images]
    for path in images:
        ignored.pop(path.with_suffix(".txt").name, None)
    if prompts_file is not None:
        ignored.pop(prompts_file.name, None)
    return FolderScan(items, ignored, sorted(set(prompts) - used))


def _ignored_summary(ignored: dict[str, str]) -> str:
    supported = ", ".join(IMAGE_SUFFIXES)
    if not ignored:
        return f"The folder is empty; supported images: {supported}."
    shown = "; ".join(f"{printable(name)} ({reason})" for name, reason in list(ignored.items())[:8])
    more = f"; and {len(ignored) - 8} more" if len(ignored) > 8 else ""
    return f"Ignored: {shown}{more}. Supported images: {supported}."


def _folder_item(path: Path, prompts: dict[str, str], prompts_file: Optional[Path], encoding: Optional[str], used: set[str]) -> WorkItem:
    keys = list(dict.fromkeys(k for k in (path.name, printable(path.name), path.stem, printable(path.stem)) if k in prompts))
    if len(keys) > 1:
        raise PromptSourceError(f"{prompts_file}: {keys[0]!r} and {keys[1]!r} both name {printable(path.name)}; keep one.")
    if keys:
        used.add(keys[0])
        prompt, where = prompts[keys[0]], f"the prompt in {prompts_file}"
    else:
        sidecar = path.with_suffix(".txt")
        if not sidecar.is_file():
            return WorkItem(path.name, path, None, f"{printable(path.name)}: no prompt (not in the prompts file, no sidecar {printable(sidecar.name)}).")
        prompt, where = read_text(sidecar, encoding).strip(), f"sidecar {printable(sidecar.name)}"
    if not prompt:
        return WorkItem(path.name, path, None, f"{printable(path.name)}: {where} is empty.")
    return WorkItem(path.name, path, prompt)
