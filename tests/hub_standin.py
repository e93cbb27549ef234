"""A stand-in for the Hugging Face hub and for GitHub's raw file URLs, on 127.0.0.1.

It answers the requests that huggingface_hub 2.x (and through it diffusers, transformers,
open_clip and timm), pyiqa's downloader and grefine make:

* ``GET /api/models/<repo>`` and ``/api/models/<repo>/revision/<rev>``: the repository's commit
  and files (``?blobs=true``: with sizes and LFS metadata);
* ``GET /api/models/<repo>/tree/<rev>[/<folder>]`` (``?recursive=``) and
  ``POST /api/models/<repo>/paths-info/<rev>``: listings;
* ``HEAD`` / ``GET /<repo>/resolve/<rev>/<path>``: ``X-Repo-Commit``, ``ETag`` (an LFS file's
  SHA-256, another file's git blob id), ``Content-Length``, ranges (``206``); a missing file is a
  ``404`` with ``X-Error-Code: EntryNotFound``, a missing repository ``RepoNotFound`` — no xet
  headers, so files come over plain HTTP;
* ``HEAD`` / ``GET /<owner>/<name>/raw/<commit>/<path>``: GitHub's raw files.

Each repository is a folder on disk served under its real id at one fixed commit. Every request
is recorded (:attr:`StandInHub.requests`; :meth:`StandInHub.downloads`: the file bodies sent),
and two faults can be switched on: a file served with other bytes (:meth:`StandInHub.corrupt`)
and a connection cut in the middle of a file (:meth:`StandInHub.cut`).
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".png")


@dataclass(frozen=True)
class ServedFile:
    """A file of a repository: where it is on disk and its hub metadata."""

    disk: Path
    size: int
    git_oid: str
    sha256: str

    @property
    def lfs(self) -> bool:
        return self.disk.suffix in LFS_SUFFIXES

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid

    @classmethod
    def of(cls, disk: Path) -> "ServedFile":
        data = disk.read_bytes()
        git_oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return cls(disk, len(data), git_oid, hashlib.sha256(data).hexdigest())


@dataclass
class ServedRepo:
    repo_id: str
    files: dict[str, ServedFile]

    @property
    def commit(self) -> str:
        return hashlib.sha1(f"grefine-standin:{self.repo_id}".encode()).hexdigest()

    @classmethod
    def from_folder(cls, repo_id: str, folder: Path) -> "ServedRepo":
        files = {path.relative_to(folder).as_posix(): ServedFile.of(path) for path in sorted(folder.rglob("*")) if path.is_file()}
        return cls(repo_id, files)


@dataclass
class StandInHub:
    """The server's state: repositories, raw files (URL path -> file), faults, request log."""

    repos: dict[str, ServedRepo] = field(default_factory=dict)
    raw: dict[str, Path] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)
    corrupted: dict[str, bytes] = field(default_factory=dict)
    cuts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def add_repo(self, repo_id: str, folder: Path) -> None:
        self.repos[repo_id] = ServedRepo.from_folder(repo_id, folder)

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> "StandInHub":
        """Serve on a free port of 127.0.0.1 (:attr:`url`, kept after :meth:`stop`)."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving: a client then finds nothing listening at :attr:`url`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def downloads(self) -> list[str]:
        """URL paths whose bodies were sent (``GET`` of a file, whole or a range)."""
        with self.lock:
            return list(self.bodies)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bodies.clear()
            self.unknown.clear()

    def corrupt(self, url_path: str, data: bytes) -> None:
        """Serve ``data`` instead of the file at ``url_path``."""
        self.corrupted[url_path] = data

    def cut(self, url_path: str) -> None:
        """Cut the connection in the middle of the file at ``url_path``: the first ``GET`` gets its
        headers and half its body, later ones nothing, until :meth:`heal`."""
        self.cuts[url_path] = 0

    def heal(self) -> None:
        self.corrupted.clear()
        self.cuts.clear()


def _handler(hub: StandInHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._route("HEAD")

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        # ------------------------------------------------------------------ routing

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            with hub.lock:
                hub.requests.append((method, self.path))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                return self._api(method, parts[2:], parse_qs(url.query))
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(method, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), path)
            if path in hub.raw and method in ("GET", "HEAD"):
                return self._send_file(method, path, hub.raw[path], {})
            with hub.lock:
                hub.unknown.append((method, self.path))
            self._json(404, {"error": "not found"}, {"X-Error-Code": "RepoNotFound"})

        def _api(self, method: str, parts: list[str], query: dict) -> None:
            repo_id, rest = "/".join(parts[:2]), parts[2:]
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if method == "GET" and (not rest or rest[0] == "revision"):
                return self._json(200, _model_info(repo, blobs=query.get("blobs") == ["True"] or query.get("blobs") == ["true"]))
            if method == "GET" and rest[0] == "tree":
                recursive = query.get("recursive", ["False"])[0].lower() == "true"
                return self._json(200, _tree(repo, "/".join(rest[2:]), recursive))
            if method == "POST" and rest[0] == "paths-info":
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                return self._json(200, [_entry(repo, p) for p in form.get("paths", []) if _entry(repo, p) is not None])
            with hub.lock:
                hub.unknown.append((method, self.path))
            self._json(404, {"error": "not found"})

        def _resolve(self, method: str, repo_id: str, revision: str, filename: str, url_path: str) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if revision not in ("main", repo.commit):
                return self._json(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
            served = repo.files.get(filename)
            if served is None:
                return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit})
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{served.etag}"'}
            self._send_file(method, url_path, served.disk, headers)

        # ---------------------------------------------------------------- responses

        def _send_file(self, method: str, url_path: str, disk: Path, headers: dict[str, str]) -> None:
            data = hub.corrupted.get(url_path) or disk.read_bytes()
            start, status = 0, 200
            byte_range = self.headers.get("Range", "")
            if byte_range.startswith("bytes=") and byte_range[6:].split("-")[0].isdigit():
                start, status = int(byte_range[6:].split("-")[0]), 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            if method == "GET" and url_path in hub.cuts:
                hub.cuts[url_path] += 1
                if hub.cuts[url_path] > 1:  # the outage goes on: no answer at all
                    self.close_connection = True
                    return
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(body)), "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}.items():
                self.send_header(key, value)
            self.end_headers()
            if method != "GET":
                return
            with hub.lock:
                hub.bodies.append(url_path)
            if url_path in hub.cuts:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            for key, value in {**(headers or {}), "Content-Type": "application/json", "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


def _model_info(repo: ServedRepo, *, blobs: bool) -> dict:
    siblings = []
    for name, served in repo.files.items():
        sibling: dict = {"rfilename": name}
        if blobs:
            sibling.update(size=served.size, blobId=served.git_oid)
            if served.lfs:
                sibling["lfs"] = {"sha256": served.sha256, "size": served.size, "pointerSize": 134}
        siblings.append(sibling)
    return {
        "_id": repo.commit[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "sha": repo.commit,
        "private": False,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "lastModified": "2024-01-01T00:00:00.000Z",
        "createdAt": "2024-01-01T00:00:00.000Z",
    }


def _entry(repo: ServedRepo, path: str) -> dict | None:
    served = repo.files.get(path)
    if served is not None:
        entry = {"type": "file", "path": path, "size": served.size, "oid": served.git_oid}
        if served.lfs:
            entry["lfs"] = {"oid": served.sha256, "size": served.size, "pointerSize": 134}
        return entry
    if any(name.startswith(path.rstrip("/") + "/") for name in repo.files):
        return {"type": "directory", "path": path.rstrip("/"), "oid": hashlib.sha1(path.encode()).hexdigest()}
    return None


def _tree(repo: ServedRepo, folder: str, recursive: bool) -> list[dict]:
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    entries: dict[str, dict] = {}
    for name in repo.files:
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split("/")
        for depth in range(1, len(parts)):  # the folders on the way
            if recursive or depth == 1:
                sub = prefix + "/".join(parts[:depth])
                entries.setdefault(sub, _entry(repo, sub))
        if recursive or len(parts) == 1:
            entries[name] = _entry(repo, name)
    return list(entries.values())
