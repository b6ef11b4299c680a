"""The download step of `python -m training data`: fetch each (label, url) into data/<name>/raw/<label>/.

    from training.data.download import download_all
    fetched = download_all([("teddy", "https://example.com/t.jpg")], Path("data/bears"), Config())

Every URL ends as one `Fetched`: ok (a raw file), failed (the network let us down) or rejected (we refused
it), with a short reason code. Each outcome is appended to data/<name>/downloads.csv the moment it is
known, so Ctrl-C loses nothing, and a rerun only fetches what that file does not already account for.

Only public http(s) addresses are contacted (every redirect hop is checked) unless `allow_private_urls`
is set, files are capped in bytes and in total time, and a raw file appears only once complete.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import email.utils
import functools
import hashlib
import ipaddress
import logging
import os
import random
import socket
import ssl
import tempfile
import time
from collections import Counter
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator, Callable, Coroutine, Sequence

import httpx
from tqdm.auto import tqdm

from serving.imaging import identify, sniff_non_image
from training.config import Config
from training.data.manifest import check_label
from training.errors import StageError

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOG_NAME = "downloads.csv"
# Some image hosts answer non-browser agents with a 403 or an HTML page.
USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/126.0 Safari/537.36")
ACCEPT = "image/avif,image/webp,image/png,image/jpeg,image/gif,image/*;q=0.8,*/*;q=0.5"  # what a browser asks
MAX_REDIRECTS = 5
BACKOFF_BASE = 0.5  # seconds before the first retry; doubled each time, with jitter
BINARY_TYPES = ("application/octet-stream", "binary/octet-stream")
SNIFF_BYTES = 16  # what serving.imaging.identify reads: a download that shows no image format's signature stops
STALE_MARGIN = 60.0  # seconds past the deadline after which a .part file can belong to no live download


@dataclass(frozen=True)
class Fetched:
    label: str
    url: str
    status: str  # "ok" | "failed" | "rejected"
    reason: str  # "" when ok, else a short code
    file: str  # raw file path relative to data_dir when ok, else ""


class _Stop(Exception):
    """Ends one download with a final status, reason code and a detail for the debug log."""

    def __init__(self, status: str, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.status, self.reason = status, reason


class _Retry(Exception):
    """A 429 or 5xx answer, worth asking again after a pause."""

    def __init__(self, code: int, retry_after: float | None):
        super().__init__(f"HTTP {code}")
        self.code, self.retry_after = code, retry_after


def download_all(items: Sequence[tuple[str, str]], data_dir: Path, cfg: Config, *,
                 allow_address: Callable[[IPAddress], bool] | None = None) -> list[Fetched]:
    """Download each (label, url) into data_dir/raw/<label>/, returning one Fetched per item in order."""
    items = [(label, url) for label, url in items]  # lists from a CSV reader become hashable pairs
    _check_settings(items, cfg)
    data_dir = Path(data_dir)
    log_path = data_dir / LOG_NAME
    known = _recorded(log_path, data_dir, cfg.retry_failed)
    _remove_stale_parts(data_dir / "raw", cfg.deadline + STALE_MARGIN)
    todo = list(dict.fromkeys(key for key in items if key not in known))
    allow = allow_address or (_allow_all if cfg.allow_private_urls else _public_only)
    started = time.monotonic()
    run = _Run(data_dir, cfg, allow, log_path, total=len(todo))
    try:
        fresh = _run_sync(run.download(todo))
    except OSError as exc:  # network errors arrive as httpx errors; this is the disk
        raise StageError(f"cannot write downloads under {data_dir}: {exc}; free some space or choose "
                         "another folder with --data, then rerun to continue") from exc
    finally:
        run.close()
    every = {**known, **fresh}
    outcomes = [every[key] for key in items]
    _summarise(outcomes, len(items) - len(todo), run.bytes, time.monotonic() - started)
    return outcomes


class _Run:
    """What one download_all call shares: settings, the address policy, the log file and the progress bar."""

    def __init__(self, data_dir: Path, cfg: Config, allow: Callable[[IPAddress], bool], log_path: Path, total: int):
        self.data_dir, self.cfg, self.allow = data_dir, cfg, allow
        self.bytes = 0
        self._addresses: dict[str, list[IPAddress]] = {}
        self._log = _Log(log_path)
        # disable=None: drawn on a terminal only, not into a log file
        self._bar = tqdm(total=total, unit="img", desc="download", leave=False, disable=None if total else True)

    async def download(self, todo: list[tuple[str, str]]) -> dict[tuple[str, str], Fetched]:
        """Fetch every pair concurrently, at most cfg.workers at a time."""
        slots = asyncio.Semaphore(self.cfg.workers)
        async with _client(self.cfg) as client:
            tasks = [asyncio.ensure_future(self._one(client, slots, label, url)) for label, url in todo]
            try:
                done = await asyncio.gather(*tasks)
            except BaseException:
                # Cancel the rest before the client closes under them, and let their cleanup run.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        return {(f.label, f.url): f for f in done}

    def close(self) -> None:
        self._bar.close()
        self._log.close()

    async def _one(self, client: httpx.AsyncClient, slots: asyncio.Semaphore, label: str, url: str) -> Fetched:
        fetched = await _fetch(self, client, slots, label, url)
        self._log.append(fetched)
        self._bar.update(1)
        return fetched

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address the host resolves to, looked up once per run."""
        if host not in self._addresses:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise _Stop("failed", "dns_error", f"cannot resolve {host}: {exc}") from exc
            except UnicodeError as exc:  # a label over 63 characters, which the resolver cannot even encode
                raise _Stop("rejected", "bad_url", f"host name {host[:80]!r}: {exc}") from exc
            self._addresses[host] = [_ip(info[4][0]) for info in infos]
        return self._addresses[host]


async def _fetch(run: _Run, client: httpx.AsyncClient, slots: asyncio.Semaphore, label: str, url: str) -> Fetched:
    """One URL to its final outcome, retrying 429 and 5xx; the deadline applies to each attempt."""
    attempt = 0
    while True:
        async with slots:
            outcome = await _attempt(run, client, label, url)
        if not isinstance(outcome, _Retry):
            return outcome
        wait = _retry_wait(outcome.retry_after, attempt, run.cfg)
        if attempt >= run.cfg.retries or wait is None:
            return _failed(label, url, "failed", f"http_{outcome.code}",
                           f"after {attempt + 1} tries (Retry-After: {outcome.retry_after})")
        log.debug("retrying %s in %.1f s after HTTP %d", url, wait, outcome.code)
        # Sleep without holding a slot, so other downloads use the wait.
        await asyncio.sleep(wait)
        attempt += 1


async def _attempt(run: _Run, client: httpx.AsyncClient, label: str, url: str) -> Fetched | _Retry:
    """One try at a URL, turning every expected failure into an outcome or a retry."""
    try:
        async with asyncio.timeout(run.cfg.deadline):
            file = await _get(run, client, label, url)
        return Fetched(label, url, "ok", "", file)
    except _Retry as retry:
        return retry
    except _Stop as stop:
        return _failed(label, url, stop.status, stop.reason, str(stop))
    except (TimeoutError, httpx.TimeoutException) as exc:
        return _failed(label, url, "failed", "timeout", f"{type(exc).__name__}, deadline {run.cfg.deadline} s")
    except httpx.InvalidURL as exc:
        return _failed(label, url, "rejected", "bad_url", str(exc))
    except httpx.DecodingError as exc:
        return _failed(label, url, "failed", "decoding_error", str(exc))
    except httpx.TransportError as exc:
        return _failed(label, url, "failed", "connection_error", f"{type(exc).__name__}: {exc}")


async def _get(run: _Run, client: httpx.AsyncClient, label: str, url: str) -> str:
    """Follow redirects by hand, checking each hop's address, and save the final answer's body."""
    target = httpx.URL(url)
    for _ in range(MAX_REDIRECTS + 1):
        await _check_target(run, target)
        async with client.stream("GET", target) as response:
            if response.next_request is None:
                return await _save(run, response, label, url)
            target = response.next_request.url
    raise _Stop("failed", "too_many_redirects", f"more than {MAX_REDIRECTS} redirects")


async def _check_target(run: _Run, url: httpx.URL) -> None:
    """Refuse a non-http(s) URL, or a host with any resolved address the policy does not allow."""
    if url.scheme not in ("http", "https"):
        raise _Stop("rejected", "unsupported_scheme" if url.scheme else "bad_url", f"scheme {url.scheme!r}")
    if not url.raw_host:
        raise _Stop("rejected", "bad_url", "no host")
    host = url.raw_host.decode("ascii")
    # Every address, not just the first: the connection may use any of them.
    for ip in await run.resolve(host, url.port or (443 if url.scheme == "https" else 80)):
        if not run.allow(ip):
            raise _Stop("rejected", "private_address", f"{host} resolves to {ip}")


async def _save(run: _Run, response: httpx.Response, label: str, url: str) -> str:
    """Check the answer, stream it to a temp file under the byte cap, then rename it into place."""
    _check_response(response, run.cfg.max_bytes)
    chunks = response.aiter_bytes()
    head, ext = await _read_head(chunks, run.cfg.max_bytes)
    folder = run.data_dir / "raw" / label
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / (hashlib.sha1(url.encode()).hexdigest()[:16] + ext)
    fd, part = tempfile.mkstemp(dir=folder, prefix=final.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            size = await _copy(head, chunks, out, run.cfg.max_bytes)
        os.replace(part, final)
    except BaseException:
        # Also on Ctrl-C and cancellation: a half-written file must never look like an image.
        Path(part).unlink(missing_ok=True)
        raise
    run.bytes += size
    return final.relative_to(run.data_dir).as_posix()


def _check_response(response: httpx.Response, max_bytes: int) -> None:
    """Raise unless the status and headers promise an image within the byte cap."""
    code = response.status_code
    if code == 429 or code >= 500:
        raise _Retry(code, _retry_after(response.headers.get("retry-after")))
    if not 200 <= code < 300:
        raise _Stop("failed", f"http_{code}")
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and not (ctype.startswith("image/") or ctype in BINARY_TYPES):
        raise _Stop("rejected", "not_image", f"Content-Type {ctype}")
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise _Stop("rejected", "too_large", f"Content-Length {length} > {max_bytes}")


async def _read_head(chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[bytes, str]:
    """Read just enough bytes to recognise a raster signature; return them and the file extension."""
    head = b""
    async for chunk in chunks:
        head += chunk
        _check_size(len(head), max_bytes)
        ext = _sniff(head)
        if ext is None:
            raise _Stop("rejected", "not_image",
                        sniff_non_image(head) or f"no image format's signature in {head[:16]!r}")
        if ext:
            return head, ext
    if not head:
        raise _Stop("rejected", "empty", "zero bytes")
    raise _Stop("rejected", "not_image", f"only {len(head)} bytes")


async def _copy(head: bytes, chunks: AsyncIterator[bytes], out, max_bytes: int) -> int:
    """Write head and the rest of the body to out, counting against the cap; return the size."""
    out.write(head)
    size = len(head)
    async for chunk in chunks:
        size += len(chunk)
        _check_size(size, max_bytes)
        out.write(chunk)
    return size


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise _Stop("rejected", "too_large", f"over {max_bytes} bytes")


def _sniff(head: bytes) -> str | None:
    """The raw file's extension when `head` starts like an image the clean stage reads (serving.imaging decides);
    "" while too few bytes to tell; None for anything else (a web page, say)."""
    if sniff_non_image(head):
        return None
    if len(head) < SNIFF_BYTES:
        return ""
    fmt = identify(head)
    return f".{fmt.lower()}" if fmt else None


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _retry_wait(retry_after: float | None, attempt: int, cfg: Config) -> float | None:
    """How long to wait before the next try, or None when the server asks for longer than we allow."""
    if retry_after is not None:
        return retry_after if retry_after <= cfg.max_retry_after else None
    # Jitter keeps many workers that failed together from retrying together.
    return BACKOFF_BASE * 2 ** attempt * random.uniform(0.5, 1.5)


def _failed(label: str, url: str, status: str, reason: str, detail: str) -> Fetched:
    log.debug("%s %s (%s): %s", status, url, reason, detail)
    return Fetched(label, url, status, reason, "")


def _client(cfg: Config) -> httpx.AsyncClient:
    timeout = httpx.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout, write=cfg.read_timeout,
                            pool=cfg.deadline)
    limits = httpx.Limits(max_connections=cfg.workers, max_keepalive_connections=cfg.workers)
    # trust_env=False: a proxy from the environment would make connections our address check never
    # sees, and ~/.netrc credentials must not go to arbitrary image hosts.
    return httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False, trust_env=False,
                             verify=_ssl_context(), headers={"User-Agent": USER_AGENT, "Accept": ACCEPT})


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes ~0.1 s; pay it once per process, not once per call.
    return httpx.create_ssl_context()


def _public_only(ip: IPAddress) -> bool:
    # is_global alone lets some multicast ranges through.
    return ip.is_global and not ip.is_multicast


def _allow_all(ip: IPAddress) -> bool:
    return True


def _ip(address: str) -> IPAddress:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    # ::ffff:10.0.0.1 is 10.0.0.1; judge it as IPv4 (older Pythons call the mapped form global).
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip


class _Log:
    """downloads.csv, appended one flushed row per finished URL, so an interrupted run leaves a valid file."""

    COLUMNS = tuple(f.name for f in fields(Fetched))

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        torn = not fresh and not path.read_bytes().endswith(b"\n")
        self._file = open(path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, lineterminator="\n")
        if fresh:
            self._writer.writerow(self.COLUMNS)
        elif torn:
            self._file.write("\n")  # a run killed mid-row: start ours on a line of its own
        self._file.flush()

    def append(self, fetched: Fetched) -> None:
        self._writer.writerow(astuple(fetched))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _recorded(path: Path, data_dir: Path, retry_failed: bool) -> dict[tuple[str, str], Fetched]:
    """Outcomes an earlier run recorded that still stand: ok with the file present, or any other unless retrying."""
    if not path.exists():
        return {}
    newest: dict[tuple[str, str], Fetched] = {}
    unreadable = 0
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not _complete(row):
                unreadable += 1
                continue
            fetched = Fetched(**{name: row[name] for name in _Log.COLUMNS})
            newest[(fetched.label, fetched.url)] = fetched
    if unreadable:
        log.warning("%s: ignored %d unreadable row(s), probably from an interrupted run; "
                    "those URLs will be downloaded again", path, unreadable)
    return {key: f for key, f in newest.items()
            if (f.status == "ok" and (data_dir / f.file).is_file()) or (f.status != "ok" and not retry_failed)}


def _complete(row: dict) -> bool:
    """Whether a downloads.csv row has every column and a known status (a torn last line has not)."""
    return (None not in row and all(isinstance(row.get(name), str) for name in _Log.COLUMNS)
            and row["status"] in ("ok", "failed", "rejected"))


def _remove_stale_parts(raw: Path, max_age: float) -> None:
    """Delete temp files a killed run left behind; a live download's temp file is never older than its deadline."""
    now = time.time()
    stale = [p for p in raw.glob("*/*.part") if now - p.stat().st_mtime > max_age]
    for part in stale:
        part.unlink(missing_ok=True)
    if stale:
        log.info("removed %d unfinished download(s) left by a killed run", len(stale))


def _check_settings(items: Sequence[tuple[str, str]], cfg: Config) -> None:
    """Refuse settings and labels that cannot work, before any download starts."""
    if cfg.workers < 1:
        raise StageError(f"workers is {cfg.workers}; pass --workers 1 or more")
    for label in {label for label, _ in items}:
        check_label(label)


def _run_sync(coro: Coroutine):
    """Run a coroutine to completion, also from code that already runs an event loop (Jupyter, Gradio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _summarise(outcomes: list[Fetched], reused: int, nbytes: int, seconds: float) -> None:
    if not outcomes:  # images from a folder or an archive: nothing was downloaded, so nothing to say
        return
    counts = Counter(f.status for f in outcomes)
    reasons = Counter(f.reason for f in outcomes if f.status != "ok")
    why = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common())
    log.info("download: %d ok, %d failed, %d rejected of %d URLs (%d from an earlier run); %.1f MB in %.1f s%s",
             counts["ok"], counts["failed"], counts["rejected"], len(outcomes), reused, nbytes / 1e6, seconds,
             f"; {why}" if why else "")
