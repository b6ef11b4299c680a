"""A stand-in Hugging Face Hub on loopback, spoken to by the real `huggingface_hub` client.

    with StandInHub(tokens={"hf_good": "alice"}) as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_good")
        api.create_repo("alice/bears")
        api.upload_folder(repo_id="alice/bears", folder_path="models/bears")
        assert set(hub.files("model", "alice/bears")) >= {"model.onnx", "config.json"}

It is a real HTTP server (ThreadingHTTPServer on 127.0.0.1, port 0) that answers the routes the installed
`huggingface_hub` 2.4 calls: whoami, repo create/info/tree/commits/refs (models, Spaces and datasets),
preupload, the git-LFS batch API with
a PUT upload and a verify call, the ndjson commit API, `resolve` downloads (HEAD and GET, with ranges), README
YAML validation and Space variables, secrets, runtime and hardware. State lives in memory and is inspected with
`.repo()`, `.commits()`, `.files()`, `.variables()` and `.requests`; `.create()` and `.commit()` seed repos
without HTTP (e.g. a model for the app to download). Run its own tests with
`python -m pytest tests/test_hub_server.py -q`.

How a test must configure the client (huggingface_hub reads its settings once, when it is first imported):
- Endpoint: the port is only known once the server runs, after huggingface_hub has been imported, so
  in-process code must pass it explicitly: `HfApi(endpoint=hub.endpoint, ...)`,
  `hf_hub_download(..., endpoint=hub.endpoint, cache_dir=tmp)`. Setting `HF_ENDPOINT` in-process does nothing.
- Xet: hf_xet is installed, and huggingface_hub then uploads through Xet, which this server refuses (501 on
  `xet-write-token`; hf_xet's ConnectionError names that URL, not the reason). Either set `HF_HUB_DISABLE_XET=1` before the first import of huggingface_hub anywhere in
  the process (top of conftest.py, before gradio, which imports it), or, since `is_xet_available()` reads the
  constant at call time, `monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)`.
  `HF_HUB_OFFLINE` works the same way (`constants.HF_HUB_OFFLINE`, read at call time).
- Subprocesses (the app, the CLI, an offline check) get a fresh import, so plain environment variables work
  there: use `hub.client_env(hf_home, token=...)`, which sets HF_ENDPOINT, HF_HOME, HF_HUB_CACHE,
  HF_HUB_DISABLE_XET and, on request, HF_HUB_OFFLINE and HF_TOKEN.
- Tokens: pass one explicitly (`token="hf_good"`, or `token=False` for none). Like the real Hub, a request
  carrying an unknown token gets 401 even on a public repo, so a stray HF_TOKEN in the environment shows up.

What it does not do: branches other than `main`, tags, pull requests, Xet, multipart LFS, gated
repos, organisations. A request to any route it lacks gets 404 with a body that names the route, so a missing
feature shows up as a clear failure, never as silent success.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import socket
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

KINDS = {"models": "model", "spaces": "space", "datasets": "dataset"}
URL_PREFIX = {"model": "", "space": "spaces/", "dataset": "datasets/"}

# The real Hub sends text files over this size to LFS; binaries always go there.
DEFAULT_LFS_THRESHOLD_BYTES = 10 * 1000 * 1000

SPACE_REFUSAL_MESSAGE = (
    "Cannot create a {sdk} Space on free cpu-basic hardware: this account needs a PRO subscription, or a payment "
    "method and credits to use paid hardware. Static Spaces are free."
)
HARDWARE_REFUSAL_MESSAGE = (
    "Cannot use {hardware} hardware: this account has no payment method. Add one and buy credits to use paid "
    "hardware, or use the free cpu-basic."
)
FREE_HARDWARE = "cpu-basic"
XET_REFUSAL_MESSAGE = (
    "The stand-in Hub does not speak Xet. Set HF_HUB_DISABLE_XET=1 before huggingface_hub is first imported "
    "(or patch huggingface_hub.constants.HF_HUB_DISABLE_XET) so uploads take the classic LFS path."
)

# The patterns the real Hub writes into a new repo's .gitattributes (abridged): these go to LFS whatever their size.
_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz "
        "*.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar "
        "*.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
    ).split()
)
_LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


# ---------------------------------------------------------------------------------------------------------------
# Stored state
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredFile:
    """One file in one commit: its bytes, and whether git keeps it as an LFS pointer."""

    content: bytes
    lfs: bool
    sha256: str
    blob_id: str  # the git object id: of the content, or of the LFS pointer when lfs

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def pointer(self) -> bytes:
        return _LFS_POINTER.format(oid=self.sha256, size=self.size).encode()


@dataclass(frozen=True)
class HubCommit:
    """A commit on `main`: what it changed, and the whole tree after it."""

    oid: str
    title: str
    description: str
    author: str
    date: str
    added: tuple[str, ...]
    deleted: tuple[str, ...]
    tree: Mapping[str, StoredFile]


@dataclass
class HubRepo:
    """A model or Space repo with a linear history on `main`."""

    kind: str
    repo_id: str
    private: bool
    sdk: str | None
    created_at: str
    commits: list[HubCommit] = field(default_factory=list)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    variables: dict[str, dict] = field(default_factory=dict)
    secrets: dict[str, dict] = field(default_factory=dict)
    hardware: str | None = None  # Spaces only: the hardware requested, cpu-basic unless asked otherwise

    @property
    def head(self) -> HubCommit:
        return self.commits[-1]

    @property
    def owner(self) -> str:
        return self.repo_id.split("/")[0]


@dataclass(frozen=True)
class SeenRequest:
    """One request the server answered (or dropped: status 0)."""

    method: str
    path: str
    status: int


def stored_file(content: bytes, lfs: bool) -> StoredFile:
    """Describe `content` the way git and git-lfs would store it."""
    sha256 = hashlib.sha256(content).hexdigest()
    pointer = _LFS_POINTER.format(oid=sha256, size=len(content)).encode()
    return StoredFile(content=content, lfs=lfs, sha256=sha256, blob_id=_git_blob_id(pointer if lfs else content))


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _looks_binary(sample: bytes) -> bool:
    """Roughly the Hub's rule: a NUL byte, or bytes that are not UTF-8, mean binary."""
    if b"\0" in sample:
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        # The sample is cut at 512 bytes, possibly inside a multi-byte character: that is still text.
        return not (error.reason == "unexpected end of data" and error.start >= len(sample) - 3)
    return False


def _lfs_patterns(tree: Mapping[str, StoredFile]) -> list[str]:
    attributes = tree.get(".gitattributes")
    if attributes is None:
        return []
    lines = attributes.content.decode("utf-8", "replace").splitlines()
    return [line.split()[0] for line in lines if "filter=lfs" in line and line.split()]


def _tracked_by_lfs(tree: Mapping[str, StoredFile], path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(path if "/" in p else name, p) for p in _lfs_patterns(tree))


def _front_matter(tree: Mapping[str, StoredFile]) -> dict | None:
    readme = tree.get("README.md")
    if readme is None:
        return None
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme.content.decode("utf-8", "replace"), re.S)
    try:
        data = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _commit_oid(parent: str, title: str, tree: Mapping[str, StoredFile], counter: int) -> str:
    listing = "".join(f"{path}\0{f.blob_id}\n" for path, f in sorted(tree.items()))
    return hashlib.sha1(f"{parent}\n{title}\n{counter}\n{listing}".encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# HTTP plumbing: a request, a reply, and the errors the client parses
# ---------------------------------------------------------------------------------------------------------------


class HubError(Exception):
    """An error reply in the shape `huggingface_hub.utils.hf_raise_for_status` reads."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] = (),
        extra: Mapping[str, Any] = (),
    ):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = dict(headers), dict(extra)


class _DropConnection(Exception):
    """Raised mid-request to close the socket without any reply."""


@dataclass
class _Call:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    handler: BaseHTTPRequestHandler
    body: bytes = b""

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Request body is not JSON: {error}") from error

    def flag(self, name: str) -> bool:
        return self.query.get(name, [""])[0].lower() in {"1", "true", "yes"}


@dataclass
class _Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, content_type: str = "application/json; charset=utf-8") -> _Reply:
        return cls(status, json.dumps(data).encode(), {"Content-Type": content_type})


def _error_reply(error: HubError) -> _Reply:
    reply = _Reply.json({"error": error.message, **error.extra}, status=error.status)
    # Header values must be latin-1; the body keeps the full message.
    reply.headers["X-Error-Message"] = error.message.encode("latin-1", "replace").decode("latin-1")
    if error.code:
        reply.headers["X-Error-Code"] = error.code
    reply.headers.update(error.headers)
    return reply


def _iter_body(rfile, headers: Message, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
    """Yield a request body sent with Content-Length or with chunked transfer encoding."""
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        yield from _iter_chunked(rfile)
        return
    remaining = int(headers.get("Content-Length") or 0)
    while remaining > 0:
        chunk = rfile.read(min(chunk_size, remaining))
        if not chunk:
            return
        remaining -= len(chunk)
        yield chunk


def _iter_chunked(rfile) -> Iterator[bytes]:
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline().strip():  # trailers, then the blank line
                pass
            return
        yield rfile.read(size)
        rfile.readline()


Route = tuple[str, re.Pattern, str]
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_API_REPO = rf"/api/(?P<kinds>models|spaces|datasets)/{_REPO}"
_GIT_REPO = rf"/(?:(?P<kinds>spaces|datasets)/)?{_REPO}"
_ROUTES: list[Route] = [
    (m, re.compile(f"^{pattern}$"), name)
    for m, pattern, name in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", rf"{_API_REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("POST", rf"{_API_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"{_API_REPO}/commit/(?P<rev>[^/]+)", "commit"),
        ("GET", rf"{_API_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        ("POST", rf"{_API_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("GET", rf"{_API_REPO}/commits/(?P<rev>[^/]+)", "list_commits"),
        ("GET", rf"{_API_REPO}/refs", "refs"),
        ("*", rf"{_API_REPO}/xet-[a-z]+-token/.*", "xet"),
        ("GET", rf"/api/(?P<kinds>spaces)/{_REPO}/variables", "get_variables"),
        ("POST", rf"/api/(?P<kinds>spaces)/{_REPO}/variables", "add_variable"),
        ("DELETE", rf"/api/(?P<kinds>spaces)/{_REPO}/variables", "delete_variable"),
        ("POST", rf"/api/(?P<kinds>spaces)/{_REPO}/secrets", "add_secret"),
        ("DELETE", rf"/api/(?P<kinds>spaces)/{_REPO}/secrets", "delete_secret"),
        ("GET", rf"/api/(?P<kinds>spaces)/{_REPO}/runtime", "runtime"),
        ("POST", rf"/api/(?P<kinds>spaces)/{_REPO}/hardware", "request_hardware"),
        ("POST", rf"{_GIT_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("POST", rf"{_GIT_REPO}\.git/info/lfs/objects/verify", "lfs_verify"),
        ("GET", rf"{_GIT_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", rf"{_GIT_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("PUT", r"/lfs-upload/(?P<ticket>[0-9a-f]+)", "lfs_put"),
    ]
]
_STREAMING = {"lfs_put"}  # handlers that read the request body themselves


def _find_route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    for route_method, pattern, name in _ROUTES:
        match = pattern.match(path)
        if match and route_method in (method, "*"):
            groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            if "kinds" in groups or "repo" in groups:
                groups["kind"] = KINDS[groups.pop("kinds", "models")]
            return name, groups
    return None


def _make_handler(hub: StandInHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

        def setup(self) -> None:
            super().setup()
            hub._track(self.connection, opened=True)

        def finish(self) -> None:
            hub._track(self.connection, opened=False)
            super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # `hub.requests` is the log; stderr noise helps nobody

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            split = urlsplit(self.path)
            call = _Call(method, split.path, parse_qs(split.query), self.headers, self)
            try:
                reply = self._answer(call)
            except _DropConnection:
                self._drop()
                hub._record(method, unquote(split.path), 0)
                return
            self._send(reply, with_body=method != "HEAD")
            hub._record(method, unquote(split.path), reply.status)

        def _answer(self, call: _Call) -> _Reply:
            found = _find_route(call.method, call.path)
            name = found[0] if found else None
            if name not in _STREAMING:
                call.body = b"".join(_iter_body(self.rfile, self.headers))
            try:
                if hub.down:
                    raise HubError(503, "The stand-in Hub is down (StandInHub.down is set)")
                if found is None:
                    raise HubError(404, f"The stand-in Hub has no route for {call.method} {call.path}")
                return getattr(hub, f"_on_{name}")(call, **found[1])
            except HubError as error:
                return _error_reply(error)

        def _send(self, reply: _Reply, with_body: bool) -> None:
            self.send_response(reply.status)
            headers = {"Content-Length": str(len(reply.body)), **reply.headers}
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if with_body:
                self.wfile.write(reply.body)

        def _drop(self) -> None:
            # Linger 0 turns close() into a TCP reset, so the client sees a broken connection, not a short reply.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True

    return Handler


# ---------------------------------------------------------------------------------------------------------------
# The Hub
# ---------------------------------------------------------------------------------------------------------------


class StandInHub:
    """In-memory Hub on 127.0.0.1: start it with `with`, point the client at `.endpoint`."""

    def __init__(
        self,
        tokens: Mapping[str, str] | None = None,
        *,
        refuse_space_creation: bool = False,
        drop_upload_after_bytes: int | None = None,
        lfs_threshold_bytes: int = DEFAULT_LFS_THRESHOLD_BYTES,
        paid_hardware: bool = False,
    ):
        """`tokens` maps token -> user name.

        `paid_hardware=False` refuses (403) any Space hardware but the free cpu-basic, on creation or on request,
        as the Hub does for an account without a payment method.

        `drop_upload_after_bytes=N` resets the connection once N bytes of an LFS PUT have arrived, so the object
        is never stored and no commit can use it. Upload URLs are single-use (like a signed URL that expired), so
        the client's automatic retry gets a 403 at once instead of backing off for ~23 s, and the client raises.
        """
        self.tokens = dict(tokens or {})
        self.refuse_space_creation = refuse_space_creation
        self.drop_upload_after_bytes = drop_upload_after_bytes
        self.lfs_threshold_bytes = lfs_threshold_bytes
        self.paid_hardware = paid_hardware
        # Set to True to have every request answered 503, as a Hub that is down; False brings it back.
        self.down = False
        self.requests: list[SeenRequest] = []
        self.dropped_uploads = 0
        self._repos: dict[tuple[str, str], HubRepo] = {}
        self._tickets: dict[str, tuple[tuple[str, str], str, int]] = {}
        self._commit_counter = 0
        self._lock = threading.RLock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> StandInHub:
        """Listen on a free loopback port and serve from a background thread."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        # A short poll interval keeps stop(), and so each test's teardown, fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="stand-in-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections, so nothing answers afterwards."""
        if self._server is None:
            return
        self._server.shutdown()
        with self._lock:
            for connection in list(self._connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the client
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> StandInHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("StandInHub is not running; use `with StandInHub(...) as hub:` or call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def client_env(self, hf_home: str | os.PathLike, *, token: str | None = None, offline: bool = False) -> dict:
        """Environment for a subprocess whose huggingface_hub should talk to this Hub (or only to its cache)."""
        env = {k: v for k, v in os.environ.items() if k not in {"HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE"}}
        env.update(
            HF_ENDPOINT=self.endpoint if self._server else "http://127.0.0.1:9",
            HF_HOME=str(hf_home),
            HF_HUB_CACHE=str(Path(hf_home) / "hub"),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_UPDATE_CHECK="1",
        )
        if token is not None:
            env["HF_TOKEN"] = token
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        return env

    # -- helpers for tests ---------------------------------------------------------------------------------------

    def repo(self, kind: str, repo_id: str) -> HubRepo:
        """The stored repo; KeyError if it was never created."""
        with self._lock:
            return self._repos[(kind, repo_id)]

    def commits(self, kind: str, repo_id: str) -> list[HubCommit]:
        """All commits on main, oldest first; the first is the Hub's own 'initial commit'."""
        return list(self.repo(kind, repo_id).commits)

    def files(self, kind: str, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """Path -> bytes of every file at `rev` (a branch name or a commit sha)."""
        commit = self._commit_at(self.repo(kind, repo_id), rev)
        return {path: f.content for path, f in commit.tree.items()}

    def variables(self, space_id: str) -> dict[str, str]:
        """Key -> value of a Space's variables."""
        return {k: v["value"] for k, v in self.repo("space", space_id).variables.items()}

    def create(self, kind: str, repo_id: str, *, private: bool = False, sdk: str | None = None) -> HubRepo:
        """Create a repo directly (no HTTP), with the Hub's initial commit."""
        with self._lock:
            repo = HubRepo(kind, repo_id, private, sdk if kind == "space" else None, _now())
            repo.hardware = FREE_HARDWARE if kind == "space" else None
            self._repos[(kind, repo_id)] = repo
            self._append_commit(repo, repo.owner, "initial commit", "", _initial_files(repo), ())
            return repo

    def commit(self, kind: str, repo_id: str, files: Mapping[str, bytes], message: str = "Seed files") -> str:
        """Commit `files` directly (no HTTP), classifying LFS like preupload does; returns the commit sha."""
        with self._lock:
            repo = self.repo(kind, repo_id)
            added = {p: stored_file(c, self._is_lfs(repo, p, len(c), c[:512])) for p, c in files.items()}
            repo.lfs_objects.update({f.sha256: f.content for f in added.values() if f.lfs})
            return self._append_commit(repo, repo.owner, message, "", added, ()).oid

    # -- state ---------------------------------------------------------------------------------------------------

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append(SeenRequest(method, path, status))

    def _track(self, connection: socket.socket, opened: bool) -> None:
        with self._lock:
            (self._connections.add if opened else self._connections.discard)(connection)

    def _append_commit(self, repo, author, title, description, added, deleted) -> HubCommit:
        tree = dict(repo.commits[-1].tree) if repo.commits else {}
        for path in deleted:
            tree.pop(path, None)
        tree.update(added)
        self._commit_counter += 1
        parent = repo.commits[-1].oid if repo.commits else ""
        oid = _commit_oid(parent, title, tree, self._commit_counter)
        commit = HubCommit(oid, title, description, author, _now(), tuple(sorted(added)), tuple(deleted), tree)
        repo.commits.append(commit)
        return commit

    def _commit_at(self, repo: HubRepo, rev: str) -> HubCommit:
        if rev == "main":
            return repo.head
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            matches = [c for c in repo.commits if c.oid.startswith(rev)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _is_lfs(self, repo: HubRepo, path: str, size: int, sample: bytes) -> bool:
        return size > self.lfs_threshold_bytes or _looks_binary(sample) or _tracked_by_lfs(repo.head.tree, path)

    # -- authentication and access -------------------------------------------------------------------------------

    def _user(self, call: _Call) -> str | None:
        """The caller's user name, None when anonymous; an unknown token is a 401 everywhere, as on the Hub."""
        header = call.headers.get("Authorization")
        if header is None:
            return None
        token = header.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def _require_user(self, call: _Call) -> str:
        user = self._user(call)
        if user is None:
            raise HubError(401, "Invalid username or password.")
        return user

    def _readable(self, call: _Call, kind: str, repo_id: str) -> HubRepo:
        """The repo if this caller may read it; private repos look missing to everyone but their owner."""
        user = self._user(call)
        repo = self._repos.get((kind, repo_id))
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _writable(self, call: _Call, kind: str, repo_id: str) -> tuple[HubRepo, str]:
        user = self._require_user(call)
        repo = self._readable(call, kind, repo_id)
        if repo.owner != user:
            raise HubError(403, f"You don't have the rights to write to {kind} {repo_id}")
        return repo, user

    # -- account and repos ---------------------------------------------------------------------------------------

    def _on_whoami(self, call: _Call) -> _Reply:
        user = self._require_user(call)
        return _Reply.json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user.title(),
                "email": f"{user}@example.com",
                "emailVerified": True,
                "isPro": False,
                "canPay": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "stand-in", "role": "write"}},
            }
        )

    def _on_create_repo(self, call: _Call) -> _Reply:
        user = self._require_user(call)
        payload = call.json() or {}
        kind = payload.get("type") or "model"
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload.get('name')}"
        if kind not in URL_PREFIX:
            raise HubError(400, f"The stand-in Hub supports model, space and dataset repos, not {kind!r}")
        if namespace != user:
            raise HubError(403, f'You don\'t have the rights to create a {kind} under the namespace "{namespace}"')
        url = f"{self.endpoint}/{URL_PREFIX[kind]}{repo_id}"
        with self._lock:
            if (kind, repo_id) in self._repos:
                # create_repo(exist_ok=True) reads the url from this error body.
                raise HubError(409, f"You already created this {kind} repo", extra={"url": url})
            if kind == "space" and self.refuse_space_creation:
                raise HubError(403, SPACE_REFUSAL_MESSAGE.format(sdk=payload.get("sdk")))
            if kind == "space" and payload.get("hardware"):
                self._check_hardware(payload["hardware"])
            private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
            repo = self.create(kind, repo_id, private=private, sdk=payload.get("sdk"))
            if kind == "space":
                repo.hardware = payload.get("hardware") or FREE_HARDWARE
            for item in payload.get("variables") or []:
                repo.variables[item["key"]] = _variable(item)
            for item in payload.get("secrets") or []:
                repo.secrets[item["key"]] = _variable(item)
        return _Reply.json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _on_validate_yaml(self, call: _Call) -> _Reply:
        content = (call.json() or {}).get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        try:
            data = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            return _Reply.json({"errors": [{"message": f"Invalid YAML: {error}"}], "warnings": []}, status=400)
        if match and not isinstance(data, dict):
            return _Reply.json({"errors": [{"message": "Metadata must be a YAML mapping"}], "warnings": []}, 400)
        return _Reply.json({"errors": [], "warnings": []})

    def _on_repo_info(self, call: _Call, kind: str, repo: str, rev: str = "main") -> _Reply:
        with self._lock:
            stored = self._readable(call, kind, repo)
            commit = self._commit_at(stored, rev)
            return _Reply.json(self._info(stored, commit, with_blobs=call.flag("blobs")))

    def _info(self, repo: HubRepo, commit: HubCommit, with_blobs: bool) -> dict:
        info = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.owner,
            "sha": commit.oid,
            "createdAt": repo.created_at,
            "lastModified": repo.head.date,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "likes": 0,
            "tags": [],
            "cardData": _front_matter(commit.tree),
            "siblings": [_sibling(path, f, with_blobs) for path, f in sorted(commit.tree.items())],
        }
        if repo.kind == "model":
            info["downloads"] = 0
        else:
            info.update(sdk=repo.sdk, subdomain=repo.repo_id.replace("/", "-"), runtime=_runtime(repo))
        return info

    def _on_refs(self, call: _Call, kind: str, repo: str) -> _Reply:
        head = self._readable(call, kind, repo).head.oid
        branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": head}
        return _Reply.json({"branches": [branch], "converts": [], "tags": [], "pullRequests": []})

    def _on_list_commits(self, call: _Call, kind: str, repo: str, rev: str) -> _Reply:
        with self._lock:
            stored = self._readable(call, kind, repo)
            upto = stored.commits.index(self._commit_at(stored, rev))
            history = stored.commits[: upto + 1][::-1]
        return _Reply.json([_commit_json(c) for c in history])

    # -- listing -------------------------------------------------------------------------------------------------

    def _on_tree(self, call: _Call, kind: str, repo: str, rev: str, path: str = "") -> _Reply:
        with self._lock:
            tree = self._commit_at(self._readable(call, kind, repo), rev).tree
        under = path.strip("/")
        if under and not any(p.startswith(under + "/") for p in tree):
            raise HubError(404, f"{under} is not a folder at {rev}", "EntryNotFound")
        return _Reply.json(_tree_entries(tree, under, recursive=call.flag("recursive")))

    def _on_paths_info(self, call: _Call, kind: str, repo: str, rev: str) -> _Reply:
        with self._lock:
            tree = self._commit_at(self._readable(call, kind, repo), rev).tree
        wanted = parse_qs(call.body.decode()).get("paths", [])
        folders = _folders(tree)
        found = [_file_entry(p, tree[p]) for p in wanted if p in tree]
        found += [_folder_entry(p, tree) for p in wanted if p in folders]
        return _Reply.json(found)

    # -- upload: preupload, LFS batch, PUT, verify, commit -------------------------------------------------------

    def _on_preupload(self, call: _Call, kind: str, repo: str, rev: str) -> _Reply:
        with self._lock:
            stored, _ = self._writable(call, kind, repo)
            head = self._branch_head(stored, rev)
            files = [self._preupload_file(stored, head, item) for item in (call.json() or {}).get("files", [])]
        return _Reply.json({"files": files, "commitOid": head.oid})

    def _preupload_file(self, repo: HubRepo, head: HubCommit, item: dict) -> dict:
        path, size = item["path"], int(item["size"])
        lfs = self._is_lfs(repo, path, size, base64.b64decode(item.get("sample", "")))
        answer = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
        existing = head.tree.get(path)
        if existing is not None:
            # The client skips files whose oid matches, which is what makes a rerun commit nothing.
            answer["oid"] = existing.sha256 if lfs else _git_blob_id(existing.content)
        return answer

    def _branch_head(self, repo: HubRepo, rev: str) -> HubCommit:
        if rev != "main":
            raise HubError(404, f"Invalid rev id: {rev} (the stand-in Hub only writes to main)", "RevisionNotFound")
        return repo.head

    def _on_lfs_batch(self, call: _Call, kind: str, repo: str) -> _Reply:
        payload = call.json() or {}
        if payload.get("operation") != "upload":
            raise HubError(400, "The stand-in Hub only serves LFS uploads; download through /resolve")
        with self._lock:
            stored, _ = self._writable(call, kind, repo)
            objects = [self._batch_object(stored, o["oid"], int(o["size"])) for o in payload.get("objects", [])]
        return _Reply.json({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _batch_object(self, repo: HubRepo, oid: str, size: int) -> dict:
        answer = {"oid": oid, "size": size, "authenticated": True}
        if oid in repo.lfs_objects:
            return answer  # no actions: the client skips an object the Hub already holds
        ticket = secrets.token_hex(16)
        self._tickets[ticket] = ((repo.kind, repo.repo_id), oid, size)
        git_url = f"{self.endpoint}/{URL_PREFIX[repo.kind]}{repo.repo_id}.git/info/lfs/objects/verify"
        answer["actions"] = {
            "upload": {"href": f"{self.endpoint}/lfs-upload/{ticket}", "header": {}, "expires_in": 900},
            "verify": {"href": git_url, "header": {}},
        }
        return answer

    def _on_lfs_put(self, call: _Call, ticket: str) -> _Reply:
        with self._lock:
            target = self._tickets.pop(ticket, None)  # single-use: see drop_upload_after_bytes
        if target is None:
            # Read the whole body first: closing on unread bytes would reset the socket before the client reads
            # this reply, and it would retry again.
            for _ in _iter_body(call.handler.rfile, call.headers):
                pass
            raise HubError(403, "AccessDenied: Request has expired (upload URLs are single-use)")
        data = self._receive_upload(call)
        repo_key, oid, size = target
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"BadDigest: the uploaded bytes do not match oid {oid} and size {size}")
        with self._lock:
            self._repos[repo_key].lfs_objects[oid] = data
        return _Reply(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _receive_upload(self, call: _Call) -> bytes:
        received = bytearray()
        for chunk in _iter_body(call.handler.rfile, call.headers):
            received += chunk
            if self.drop_upload_after_bytes is not None and len(received) >= self.drop_upload_after_bytes:
                with self._lock:
                    self.dropped_uploads += 1
                raise _DropConnection()
        return bytes(received)

    def _on_lfs_verify(self, call: _Call, kind: str, repo: str) -> _Reply:
        payload = call.json() or {}
        with self._lock:
            stored, _ = self._writable(call, kind, repo)
            data = stored.lfs_objects.get(payload.get("oid", ""))
        if data is None or len(data) != payload.get("size"):
            raise HubError(404, f"LFS object {payload.get('oid')} of size {payload.get('size')} was not uploaded")
        return _Reply.json({"success": True})

    def _on_commit(self, call: _Call, kind: str, repo: str, rev: str) -> _Reply:
        if call.flag("create_pr"):
            raise HubError(400, "The stand-in Hub does not support pull requests")
        lines = [json.loads(line) for line in call.body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        with self._lock:
            stored, user = self._writable(call, kind, repo)
            self._check_parent(self._branch_head(stored, rev), header.get("parentCommit"))
            added, deleted = self._operations(stored, [line for line in lines if line["key"] != "header"])
            commit = self._append_commit(
                stored, user, header.get("summary", ""), header.get("description", ""), added, deleted
            )
        url = f"{self.endpoint}/{URL_PREFIX[kind]}{repo}/commit/{commit.oid}"
        return _Reply.json(
            {"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": "", "pullRequestUrl": None}
        )

    @staticmethod
    def _check_parent(head: HubCommit, parent: str | None) -> None:
        if parent is not None and not head.oid.startswith(parent):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")

    def _operations(self, repo: HubRepo, operations: list[dict]) -> tuple[dict[str, StoredFile], list[str]]:
        added: dict[str, StoredFile] = {}
        deleted: list[str] = []
        for op in operations:
            key, value = op["key"], op["value"]
            if key == "file":
                added[value["path"]] = self._regular_file(value)
            elif key == "lfsFile":
                added[value["path"]] = self._lfs_file(repo, value)
            elif key in ("deletedFile", "deletedFolder"):
                deleted += self._deleted_paths(repo, value["path"], folder=key == "deletedFolder")
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        return added, deleted

    def _regular_file(self, value: dict) -> StoredFile:
        content = base64.b64decode(value["content"])
        if _looks_binary(content[:512]) or len(content) > self.lfs_threshold_bytes:
            raise HubError(
                400,
                "Your push was rejected because it contains binary files or files larger than 10 MB. "
                f"Please use LFS to store them. Offending file: {value['path']}",
            )
        return stored_file(content, lfs=False)

    @staticmethod
    def _lfs_file(repo: HubRepo, value: dict) -> StoredFile:
        data = repo.lfs_objects.get(value["oid"])
        if data is None or ("size" in value and len(data) != value["size"]):
            raise HubError(
                400,
                "Your push was rejected because an LFS pointer pointed to a file that does not exist: "
                f"{value['path']} (oid {value['oid']})",
            )
        return stored_file(data, lfs=True)

    @staticmethod
    def _deleted_paths(repo: HubRepo, path: str, folder: bool) -> list[str]:
        prefix = path.rstrip("/") + "/"
        tree = repo.head.tree
        paths = [p for p in tree if p.startswith(prefix)] if folder else [p for p in [path] if p in tree]
        if not paths:
            raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        return paths

    # -- download ------------------------------------------------------------------------------------------------

    def _on_resolve(self, call: _Call, kind: str, repo: str, rev: str, path: str) -> _Reply:
        with self._lock:
            commit = self._commit_at(self._readable(call, kind, repo), rev)
        stored = commit.tree.get(path)
        if stored is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{stored.blob_id}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if stored.lfs:
            headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(stored.size)})
        return _ranged(stored.content, call.headers.get("Range"), headers)

    # -- Spaces --------------------------------------------------------------------------------------------------

    def _on_get_variables(self, call: _Call, kind: str, repo: str) -> _Reply:
        with self._lock:
            return _Reply.json(self._writable(call, kind, repo)[0].variables)

    def _on_add_variable(self, call: _Call, kind: str, repo: str) -> _Reply:
        payload = call.json() or {}
        with self._lock:
            stored, _ = self._writable(call, kind, repo)
            stored.variables[payload["key"]] = _variable(payload)
            return _Reply.json(stored.variables)

    def _on_delete_variable(self, call: _Call, kind: str, repo: str) -> _Reply:
        key = (call.json() or {}).get("key")
        with self._lock:
            stored, _ = self._writable(call, kind, repo)
            if stored.variables.pop(key, None) is None:
                raise HubError(404, f"Variable {key} not found")
            return _Reply.json(stored.variables)

    def _on_add_secret(self, call: _Call, kind: str, repo: str) -> _Reply:
        payload = call.json() or {}
        with self._lock:
            self._writable(call, kind, repo)[0].secrets[payload["key"]] = _variable(payload)
        return _Reply()

    def _on_delete_secret(self, call: _Call, kind: str, repo: str) -> _Reply:
        with self._lock:
            self._writable(call, kind, repo)[0].secrets.pop((call.json() or {}).get("key"), None)
        return _Reply()

    def _on_runtime(self, call: _Call, kind: str, repo: str) -> _Reply:
        with self._lock:
            return _Reply.json(_runtime(self._readable(call, kind, repo)))

    def _on_request_hardware(self, call: _Call, kind: str, repo: str) -> _Reply:
        flavor = (call.json() or {}).get("flavor")
        with self._lock:
            stored, _ = self._writable(call, kind, repo)
            self._check_hardware(flavor)
            stored.hardware = flavor
            return _Reply.json(_runtime(stored))

    def _check_hardware(self, flavor: Any) -> None:
        if not isinstance(flavor, str) or not flavor:
            raise HubError(400, "hardware must be a flavor name such as cpu-basic")
        if flavor != FREE_HARDWARE and not self.paid_hardware:
            raise HubError(403, HARDWARE_REFUSAL_MESSAGE.format(hardware=flavor))

    def _on_xet(self, call: _Call, **_: str) -> _Reply:
        raise HubError(501, XET_REFUSAL_MESSAGE)


# ---------------------------------------------------------------------------------------------------------------
# JSON shapes
# ---------------------------------------------------------------------------------------------------------------


def _initial_files(repo: HubRepo) -> dict[str, StoredFile]:
    files = {".gitattributes": stored_file(_GITATTRIBUTES.encode(), lfs=False)}
    if repo.kind == "space":
        name = repo.repo_id.split("/")[1]
        readme = (
            f"---\ntitle: {name}\nemoji: 🐻\ncolorFrom: blue\ncolorTo: green\nsdk: {repo.sdk}\n"
            "app_file: app.py\npinned: false\n---\n\n"
            "Check out the configuration reference at https://huggingface.co/docs/hub/spaces-config-reference\n"
        )
        files["README.md"] = stored_file(readme.encode(), lfs=False)
    return files


def _variable(item: Mapping[str, Any]) -> dict:
    return {"value": item["value"], "description": item.get("description"), "updatedAt": _now()}


def _runtime(repo: HubRepo) -> dict:
    app_file = (_front_matter(repo.head.tree) or {}).get("app_file", "app.py")
    stage = "RUNNING" if repo.sdk == "static" or app_file in repo.head.tree else "NO_APP_FILE"
    return {
        "stage": stage,
        "hardware": {"current": repo.hardware if stage == "RUNNING" else None, "requested": repo.hardware},
        "gcTimeout": 172800,
        "storage": None,
        "devMode": False,
    }


def _sibling(path: str, stored: StoredFile, with_blobs: bool) -> dict:
    if not with_blobs:
        return {"rfilename": path}
    sibling = {"rfilename": path, "size": stored.size, "blobId": stored.blob_id}
    if stored.lfs:
        sibling["lfs"] = {"size": stored.size, "sha256": stored.sha256, "pointerSize": len(stored.pointer)}
    return sibling


def _commit_json(commit: HubCommit) -> dict:
    return {
        "id": commit.oid,
        "authors": [{"user": commit.author, "avatar": ""}],
        "date": commit.date,
        "title": commit.title,
        "message": commit.description,
    }


def _folders(tree: Mapping[str, StoredFile]) -> set[str]:
    return {"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)}


def _file_entry(path: str, stored: StoredFile) -> dict:
    entry = {"type": "file", "oid": stored.blob_id, "size": stored.size, "path": path}
    if stored.lfs:
        entry["lfs"] = {"oid": stored.sha256, "size": stored.size, "pointerSize": len(stored.pointer)}
    return entry


def _folder_entry(folder: str, tree: Mapping[str, StoredFile]) -> dict:
    listing = "".join(f"{p}\0{f.blob_id}\n" for p, f in sorted(tree.items()) if p.startswith(folder + "/"))
    return {"type": "directory", "oid": hashlib.sha1(listing.encode()).hexdigest(), "size": 0, "path": folder}


def _tree_entries(tree: Mapping[str, StoredFile], under: str, recursive: bool) -> list[dict]:
    prefix = f"{under}/" if under else ""

    def wanted(path: str) -> bool:
        return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

    folders = sorted(f for f in _folders(tree) if wanted(f))
    files = sorted(p for p in tree if wanted(p))
    return [_folder_entry(f, tree) for f in folders] + [_file_entry(p, tree[p]) for p in files]


def _ranged(content: bytes, range_header: str | None, headers: dict[str, str]) -> _Reply:
    """Serve `content`, or the part of it a `bytes=start-[end]` Range asks for (the client resumes with it)."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header or "")
    if range_header is None or match is None or not match.group(1):
        return _Reply(200, content, headers)
    start = int(match.group(1))
    end = min(int(match.group(2)) if match.group(2) else len(content) - 1, len(content) - 1)
    if start >= len(content) or start > end:
        unsatisfiable = {"Content-Range": f"bytes */{len(content)}"}
        raise HubError(416, f"Range {range_header} is outside the file", headers=unsatisfiable)
    headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(content)}"}
    return _Reply(206, content[start : end + 1], headers)

