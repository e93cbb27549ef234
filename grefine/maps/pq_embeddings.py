"""The official PQ-Map quality embeddings (Eq. 2's learned prompt pairs T_p): where they come from,
and a download that is checked before anything uses it.

The G-Refine authors release the four prompt pairs as ``PQ-{overall,technical,rational,natural}.pth``
in github.com/Q-Future/Q-Refine, folder ``embeding/`` (sic). The config value ``official``
(``pq_map.embeddings``, the default) names them: grefine fetches each file from that repository at
the pinned commit :data:`COMMIT` — or from the base URL in the environment variable
``GREFINE_PQ_EMBEDDINGS_URL`` (a mirror, a test server) —, checks its SHA-256 against
:data:`OFFICIAL_FILES`, and keeps it in the user's cache folder
(``$XDG_CACHE_HOME/grefine/pq_embeddings/<commit>``, by default ``~/.cache/...``). A cached file
is checked again every time it is used. With ``HF_HUB_OFFLINE=1`` nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from grefine.errors import MissingWeightsError

OFFICIAL = "official"
"""The ``pq_map.embeddings`` value that names the authors' released files."""

COMMIT = "32b1bd2099802602bf6f8d7c6d0ba9b73c58a6a7"
"""The Q-Future/Q-Refine commit the files are fetched at."""

DEFAULT_BASE_URL = f"https://github.com/Q-Future/Q-Refine/raw/{COMMIT}/embeding"
URL_ENV = "GREFINE_PQ_EMBEDDINGS_URL"
"""Environment variable holding another base URL (``<base>/PQ-overall.pth`` ...)."""


@dataclass(frozen=True)
class OfficialFile:
    """One released file: its name, SHA-256 and size in bytes."""

    name: str
    sha256: str
    size: int


OFFICIAL_FILES = (
    OfficialFile("PQ-overall.pth", "7368cf8e1a0bac656e7c2b9cbffcd2b23587a06c9615e9f56f0849c5010611cc", 317275),
    OfficialFile("PQ-technical.pth", "8b674a47a44e78e09bfd9a1ada66f2c49cb280cb59afdceab500b63f758343a2", 317275),
    OfficialFile("PQ-rational.pth", "ed30d8c34799524c213f274ffa83d86cd0adc31b461437bd9d57b04e882d936c", 317275),
    OfficialFile("PQ-natural.pth", "e7546e0470f95a15176d5c8f897aaa0d65c2dbcbebfcf0a81295115845799e30", 317275),
)
"""The four files of Eq. 2 (overall, technical, rational, natural), as released at :data:`COMMIT`."""

DOWNLOAD_ATTEMPTS = 3
TIMEOUT_S = 30.0
CHUNK = 1 << 16


class EmbeddingsUnavailableError(MissingWeightsError):
    """The official embeddings are neither cached nor downloadable, or a download failed."""


class EmbeddingHashError(EmbeddingsUnavailableError):
    """A downloaded file's SHA-256 is not the released one; the file was deleted."""


def base_url() -> str:
    """Where the files are fetched from: ``GREFINE_PQ_EMBEDDINGS_URL`` or the pinned commit on GitHub."""
    return (os.environ.get(URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def cache_folder() -> Path:
    """``$XDG_CACHE_HOME/grefine/pq_embeddings/<commit>`` (``~/.cache`` when unset)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "grefine" / "pq_embeddings" / COMMIT


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def missing_files(folder: Optional[Path] = None) -> list[OfficialFile]:
    """The official files not in ``folder`` (default: :func:`cache_folder`) with their released
    hash; a cached file whose hash differs is deleted (it will be fetched again)."""
    folder = folder or cache_folder()
    missing = []
    for item in OFFICIAL_FILES:
        path = folder / item.name
        if path.is_file() and sha256_of(path) == item.sha256:
            continue
        path.unlink(missing_ok=True)
        missing.append(item)
    return missing


def downloads_disabled() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def official_folder(*, download: Optional[bool] = None, progress: bool = True) -> Path:
    """The cache folder holding the four verified official files, fetching the missing ones
    first (``download``: default unless ``HF_HUB_OFFLINE`` is set).

    Raises:
        EmbeddingsUnavailableError: a file is missing and may not or cannot be downloaded (one
            line naming it, where it comes from and what to do).
        EmbeddingHashError: a downloaded file's SHA-256 is not the released one (deleted).
    """
    folder = cache_folder()
    missing = missing_files(folder)
    if missing and (downloads_disabled() if download is None else not download):
        raise EmbeddingsUnavailableError(
            f"PQ-Map embeddings {', '.join(item.name for item in missing)} are not in {folder} and downloads are off "
            f"(HF_HUB_OFFLINE=1): they come from {base_url()}; run `python scripts/download_weights.py` while online, "
            "or set pq_map.embeddings to a folder holding the four PQ-*.pth files."
        )
    for item in missing:
        fetch_verified(f"{base_url()}/{item.name}", folder / item.name, sha256=item.sha256, size=item.size, progress=progress)
    return folder


def fetch_verified(
    url: str,
    target: Path,
    *,
    sha256: Optional[str] = None,
    size: Optional[int] = None,
    progress: bool = True,
    attempts: int = DOWNLOAD_ATTEMPTS,
) -> Path:
    """Download ``url`` to ``target``: into a temporary file of its own beside ``target`` (up to
    ``attempts`` tries, each from the start), checked — its length against the server's
    ``Content-Length`` (else ``size``), its SHA-256 against ``sha256`` — and only then renamed to
    ``target``. A failed or cut download leaves nothing under ``target``'s name; a file whose
    hash differs is deleted and refused. Also used by :mod:`grefine.weights` for other plain-URL
    weights (``sha256=None``: length checks only).

    Raises:
        EmbeddingsUnavailableError: every attempt failed (one line: the file, the URL, the cause).
        EmbeddingHashError: the SHA-256 differs (one line: the file and both hashes).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        error = ""
        for _ in range(attempts):
            error = _download_once(url, part, target.name, size, progress)
            if not error:
                break
        else:
            raise EmbeddingsUnavailableError(
                f"cannot download {target.name} from {url}: {error} (tried {attempts} times; nothing was kept, run again)."
            )
        if sha256 is not None:
            actual = sha256_of(part)
            if actual != sha256:
                raise EmbeddingHashError(
                    f"{target.name} downloaded from {url} has SHA-256 {actual}, expected {sha256}: deleted and refused "
                    f"(check {URL_ENV} or the network)."
                )
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return target


def _download_once(url: str, part: Path, name: str, size: Optional[int], progress: bool) -> str:
    """One attempt: ``url`` into ``part`` (progress shown as ``name``); returns "" on success, else why it failed."""
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "grefine", "Accept-Encoding": "identity"})
    written = 0
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else size
            with tqdm(total=expected, unit="B", unit_scale=True, desc=name, disable=not progress, leave=False) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code} {err.reason}"
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:  # refused, reset, timed out, cut off
        return f"{type(err).__name__}: {getattr(err, 'reason', err)} after {written} bytes"
    if expected is not None and written != expected:
        return f"connection closed after {written} of {expected} bytes"
    return ""
