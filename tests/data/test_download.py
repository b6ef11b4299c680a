"""training/data/download.py against the loopback image server, with real httpx: every URL gets its fate and why."""
from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import hashlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.image_corpus import corpus
from tests.image_server import good_urls
from tests.live_app import free_port
from training.config import Config
from training.data import download
from training.data.download import SNIFF_BYTES, Fetched, _ip, _public_only, _retry_after, _sniff, download_all
from training.errors import StageError

ROOT = Path(__file__).resolve().parents[2]
CFG = Config(deadline=2.0, max_bytes=1_000_000, retries=2, max_retry_after=5.0)
FORMATS = ("jpg", "png", "webp", "gif")


def loopback(ip) -> bool:
    return ip.is_loopback


# (path on the image server, status, reason). Cleaning judges the pixels later; download judges the bytes.
ROUTES = [
    ("/bad/html.jpg", "rejected", "not_image"),
    ("/bad/html-as-image.jpg", "rejected", "not_image"),
    ("/svg/image.svg", "rejected", "not_image"),
    ("/bad/empty.jpg", "rejected", "empty"),
    ("/bad/short.jpg", "rejected", "not_image"),
    ("/bad/gzip.jpg", "failed", "decoding_error"),
    ("/img/binary.jpg", "ok", ""),
    ("/bad/truncated.jpg", "ok", ""),
    ("/bad/404.jpg", "failed", "http_404"),
    ("/flaky/500-then-200.jpg", "ok", ""),
    ("/flaky/500.jpg", "failed", "http_500"),
    ("/flaky/429.jpg", "ok", ""),
    ("/flaky/429-long.jpg", "failed", "http_429"),
    ("/slow/drip.jpg", "failed", "timeout"),
    ("/slow/pieces.jpg", "ok", ""),
    ("/big/huge.jpg", "rejected", "too_large"),
    ("/big/huge-chunked.jpg", "rejected", "too_large"),
    ("/redirect/loop", "failed", "too_many_redirects"),
    ("/redirect/private", "rejected", "private_address"),
    ("/redirect/ok", "ok", ""),
    ("/img/bomb.png", "ok", ""),
    ("/img/tiny.png", "ok", ""),
    ("/img/cmyk.jpg", "ok", ""),
    ("/img/16bit.png", "ok", ""),
    ("/img/rgba.png", "ok", ""),
    ("/img/animated.gif", "ok", ""),
    ("/img/exif-rotated.jpg", "ok", ""),
    ("/dup/a.jpg", "ok", ""),
    ("/dup/b.jpg", "ok", ""),
    ("/dup/original.jpg", "ok", ""),
    ("/dup/resized.jpg", "ok", ""),
    ("/dup/shared.jpg", "ok", ""),
    ("/no/such/route.jpg", "failed", "http_404"),
]
# Never sent anywhere: refused before any connection (ftp points at loopback to prove the scheme decides).
FOREIGN = [
    ("file:///etc/passwd", "rejected", "unsupported_scheme"),
    ("data:image/png;base64,iVBORw0KGgo=", "rejected", "unsupported_scheme"),
    ("ftp://127.0.0.1/x.jpg", "rejected", "unsupported_scheme"),
    ("javascript:alert(1)", "rejected", "unsupported_scheme"),
    ("not a url", "rejected", "bad_url"),
    ("http:///x.jpg", "rejected", "bad_url"),  # no host
    ("https://[::1/x.jpg", "rejected", "bad_url"),  # httpx cannot parse it
    ("http://" + "x" * 64 + ".example/x.jpg", "rejected", "bad_url"),  # a label the resolver cannot encode
]


@pytest.fixture(scope="module")
def run(image_server, tmp_path_factory):
    """Every route, eight good images of each of two labels, and the foreign URLs, in one download_all."""
    data_dir = tmp_path_factory.mktemp("data")
    items = [("routes", image_server.url(path)) for path, _, _ in ROUTES]
    items += [(label, url) for label in ("grizzly", "teddy bear") for url in good_urls(image_server, label, 8, FORMATS)]
    items += [("routes", url) for url, _, _ in FOREIGN]
    image_server.reset()
    started = time.monotonic()
    outcomes = download_all(items, data_dir, CFG, allow_address=loopback)
    return {"dir": data_dir, "items": items, "outcomes": outcomes, "hits": dict(image_server.hits),
            "seconds": time.monotonic() - started}


def _outcome(run, url: str) -> Fetched:
    return next(f for f in run["outcomes"] if f.url == url)


def _served(server, path: str) -> bytes:
    if path == "/redirect/ok":
        return server.good_image("redirected", 0, "jpg")
    return server.static("/dup/shared.jpg" if path == "/slow/pieces.jpg" else path)


@pytest.mark.parametrize("path,status,reason", ROUTES)
def test_each_route_gets_its_status_and_reason(run, image_server, path, status, reason):
    fetched = _outcome(run, image_server.url(path))
    assert (fetched.status, fetched.reason) == (status, reason)
    if status == "ok":
        assert (run["dir"] / fetched.file).read_bytes() == _served(image_server, path)
    else:
        assert fetched.file == ""


@pytest.mark.parametrize("url,status,reason", FOREIGN)
def test_foreign_schemes_are_refused(run, url, status, reason):
    assert (_outcome(run, url).status, _outcome(run, url).reason) == (status, reason)


def test_one_outcome_per_item_in_order(run):
    assert [(f.label, f.url) for f in run["outcomes"]] == run["items"]


def test_good_images_of_every_format_are_saved_byte_for_byte(run, image_server):
    for label in ("grizzly", "teddy bear"):
        for i, url in enumerate(good_urls(image_server, label, 8, FORMATS)):
            fetched = _outcome(run, url)
            ext = FORMATS[i % 4]
            assert fetched.status == "ok" and fetched.file.startswith(f"raw/{label}/")
            # named by the format its bytes show (serving.imaging.identify), whatever the URL says
            assert fetched.file.endswith({"jpg": ".jpeg", "png": ".png", "gif": ".gif", "webp": ".webp"}[ext])
            assert (run["dir"] / fetched.file).read_bytes() == image_server.good_image(label, i, ext)


def test_retries_and_redirects_show_in_the_hit_counts(run):
    hits = run["hits"]
    assert hits["/flaky/500-then-200.jpg"] == 2
    assert hits["/flaky/429.jpg"] == 2
    assert hits["/flaky/429-long.jpg"] == 1  # Retry-After: 3600 is over max_retry_after: give up at once
    assert hits["/flaky/500.jpg"] == CFG.retries + 1
    assert hits["/bad/404.jpg"] == 1  # no retry on other 4xx
    assert hits["/redirect/loop"] == 6  # the first request and five redirects
    assert hits["/good/redirected/0.jpg"] == 1


def test_the_log_records_every_outcome_once(run):
    with open(run["dir"] / "downloads.csv", newline="") as f:
        rows = [Fetched(**row) for row in csv.DictReader(f)]
    assert sorted(rows, key=lambda f: f.url) == sorted(set(run["outcomes"]), key=lambda f: f.url)


def test_no_temp_files_are_left(run):
    assert not list(run["dir"].rglob("*.part"))
    assert {p.relative_to(run["dir"]).as_posix() for p in (run["dir"] / "raw").rglob("*.*")} == \
        {f.file for f in run["outcomes"] if f.status == "ok"}


def test_a_rerun_downloads_nothing_and_returns_the_same(run, image_server, caplog):
    before = dict(image_server.hits)
    with caplog.at_level(logging.INFO, logger="training.data.download"):
        assert download_all(run["items"], run["dir"], CFG, allow_address=loopback) == run["outcomes"]
    assert dict(image_server.hits) == before
    assert [r.levelname for r in caplog.records] == ["INFO"]  # the summary; no warning about the log


def test_retry_after_one_second_is_honoured(image_server, tmp_path):
    image_server.reset()
    started = time.monotonic()
    [fetched] = download_all([("x", image_server.url("/flaky/429.jpg"))], tmp_path, CFG, allow_address=loopback)
    assert fetched.status == "ok" and time.monotonic() - started >= 0.9


def test_retry_after_an_hour_fails_at_once(image_server, tmp_path):
    started = time.monotonic()
    [fetched] = download_all([("x", image_server.url("/flaky/429-long.jpg"))], tmp_path, CFG, allow_address=loopback)
    assert (fetched.status, fetched.reason) == ("failed", "http_429")
    assert time.monotonic() - started < 2


def test_default_policy_refuses_loopback_without_connecting(image_server, tmp_path):
    url = image_server.url("/good/policy/0.jpg")
    [fetched] = download_all([("x", url)], tmp_path, Config())
    assert (fetched.status, fetched.reason) == ("rejected", "private_address")
    assert image_server.hits["/good/policy/0.jpg"] == 0
    [fetched] = download_all([("x", url)], tmp_path / "allowed", Config(allow_private_urls=True))
    assert fetched.status == "ok" and image_server.hits["/good/policy/0.jpg"] == 1


@pytest.mark.parametrize("address,allowed", [
    ("93.184.215.14", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("::1", False), ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.251", False),
    ("240.0.0.1", False), ("fe80::1%eth0", False), ("fc00::1", False), ("::ffff:10.0.0.1", False),
    ("::ffff:8.8.8.8", True),
])
def test_default_address_policy(address, allowed):
    assert _public_only(_ip(address)) is allowed


def test_a_host_name_is_judged_by_every_address_it_resolves_to(image_server, tmp_path, caplog):
    url = image_server.url("/good/byname/0.jpg").replace("127.0.0.1", "localhost")
    image_server.reset()
    with caplog.at_level(logging.DEBUG, logger="training.data.download"):
        [fetched] = download_all([("x", url)], tmp_path, Config())
    assert fetched == Fetched("x", url, "rejected", "private_address", "")
    assert f"rejected {url} (private_address): localhost resolves to 127.0.0.1" in caplog.messages
    assert image_server.hits["/good/byname/0.jpg"] == 0
    [fetched] = download_all([("x", url)], tmp_path / "allowed", CFG, allow_address=loopback)
    assert (fetched.status, image_server.hits["/good/byname/0.jpg"]) == ("ok", 1)


def test_a_name_that_does_not_resolve_is_a_dns_error(tmp_path):
    url = "http://no-such-host.invalid/x.jpg"  # .invalid never resolves (RFC 2606)
    assert download_all([("x", url)], tmp_path, CFG) == [Fetched("x", url, "failed", "dns_error", "")]


def test_a_raw_file_is_named_by_its_url_and_written_through_a_temp_file_beside_it(image_server, tmp_path):
    drip, good = image_server.url("/slow/drip.jpg"), image_server.url("/good/named/0.png")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(download_all, [("x", drip)], tmp_path, CFG.replace(deadline=3.0), allow_address=loopback)
        _wait_for(lambda: list((tmp_path / "raw" / "x").glob("*")), 2.9)
        [part] = (tmp_path / "raw" / "x").iterdir()  # the signature has arrived, the rest is dripping
        assert [f.reason for f in running.result()] == ["timeout"]
    assert part.name.startswith(hashlib.sha1(drip.encode()).hexdigest()[:16] + ".jpeg.") and part.suffix == ".part"
    assert not part.exists() and not list(tmp_path.rglob("*.part"))
    [fetched] = download_all([("x", good)], tmp_path, CFG, allow_address=loopback)
    assert fetched.file == f"raw/x/{hashlib.sha1(good.encode()).hexdigest()[:16]}.png"


@pytest.mark.parametrize("spare,status", [(0, "ok"), (-1, "rejected")])
def test_a_file_of_exactly_max_bytes_is_kept(image_server, tmp_path, spare, status):
    url = image_server.url("/good/exact/0.jpg")
    size = len(image_server.good_image("exact", 0, "jpg"))
    [fetched] = download_all([("x", url)], tmp_path, CFG.replace(max_bytes=size + spare), allow_address=loopback)
    assert fetched.status == status


def test_the_summary_counts_every_byte_and_every_outcome(image_server, tmp_path, caplog):
    items = [("x", image_server.url(path))
             for path in ("/big/huge.jpg", "/big/huge-chunked.jpg", "/bad/404.jpg", "/bad/html.jpg")]
    with caplog.at_level(logging.INFO, logger="training.data.download"):
        download_all(items, tmp_path, CFG.replace(max_bytes=4_000_000), allow_address=loopback)
    size = sum(p.stat().st_size for p in (tmp_path / "raw" / "x").iterdir())
    assert size == 2 * len(image_server.static("/big/huge.jpg"))
    assert f"2 ok, 1 failed, 1 rejected of 4 URLs (0 from an earlier run); {size / 1e6:.1f} MB in" in caplog.text
    assert caplog.text.rstrip().endswith("s; http_404 1, not_image 1")


def test_each_refusal_is_one_debug_line_saying_why(image_server, tmp_path, caplog):
    paths = ("/bad/404.jpg", "/bad/empty.jpg", "/bad/short.jpg", "/bad/html.jpg", "/big/huge.jpg",
             "/flaky/429-long.jpg", "/slow/drip.jpg", "/flaky/500-then-200.jpg")
    urls = [image_server.url(path) for path in paths] + ["http:///x.jpg", f"http://127.0.0.1:{free_port()}/x.jpg"]
    image_server.reset()
    with caplog.at_level(logging.DEBUG, logger="training.data.download"):
        download_all([("x", url) for url in urls], tmp_path, CFG, allow_address=loopback)
    lines = {r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG}
    retries = {line for line in lines if line.startswith("retrying")}
    assert len(retries) == 1 and re.fullmatch(rf"retrying {urls[7]} in 0\.[2-8] s after HTTP 500", min(retries))
    assert lines - retries == {
        f"failed {urls[0]} (http_404): http_404", f"rejected {urls[1]} (empty): zero bytes",
        f"rejected {urls[2]} (not_image): only 3 bytes", f"rejected {urls[3]} (not_image): Content-Type text/html",
        f"rejected {urls[4]} (too_large): Content-Length 3000000 > 1000000",
        f"failed {urls[5]} (http_429): after 1 tries (Retry-After: 3600.0)",
        f"failed {urls[6]} (timeout): TimeoutError, deadline 2.0 s", f"rejected {urls[8]} (bad_url): no host",
        f"failed {urls[9]} (connection_error): ConnectError: All connection attempts failed"}


def test_a_closed_port_is_a_connection_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/x.jpg"
    assert download_all([("x", url)], tmp_path, CFG, allow_address=loopback) == [
        Fetched("x", url, "failed", "connection_error", "")]


def test_a_proxy_from_the_environment_is_never_used(image_server, tmp_path, monkeypatch):
    """A proxy would make connections the address check never sees; this one does not even listen."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    [fetched] = download_all([("x", image_server.url("/good/proxy/0.jpg"))], tmp_path, CFG, allow_address=loopback)
    assert fetched.status == "ok"


def test_requests_ask_for_images_as_a_browser_does(image_server, tmp_path):
    """Some image hosts answer a client that does not look like a browser with a 403 or a web page."""
    download_all([("x", image_server.url("/good/browser/0.jpg"))], tmp_path, CFG, allow_address=loopback)
    headers = {k.lower(): v for k, v in image_server.request_headers["/good/browser/0.jpg"].items()}
    assert headers["user-agent"].startswith("Mozilla/5.0 (X11; Linux x86_64)") and "Chrome/" in headers["user-agent"]
    assert headers["accept"].startswith("image/avif,image/webp,")


@pytest.mark.parametrize("workers", [1, 3])
def test_any_number_of_workers_from_one_downloads_everything(image_server, tmp_path, workers):
    items = [("x", url) for url in good_urls(image_server, f"workers{workers}", 4)]
    fetched = download_all(items, tmp_path, CFG.replace(workers=workers), allow_address=loopback)
    assert [f.status for f in fetched] == ["ok"] * 4


def test_zero_workers_is_refused_before_downloading(image_server, tmp_path):
    with pytest.raises(StageError) as err:
        download_all([("x", image_server.url("/good/zero/0.jpg"))], tmp_path, CFG.replace(workers=0))
    assert str(err.value) == "workers is 0; pass --workers 1 or more"


def test_temp_files_older_than_any_live_download_are_removed_and_newer_ones_kept(tmp_path, caplog):
    folder = tmp_path / "raw" / "x"
    folder.mkdir(parents=True)
    old, new = folder / "a.jpeg.1.part", folder / "b.jpeg.2.part"
    old.write_bytes(b"half"), new.write_bytes(b"half")
    age = CFG.deadline + 61  # download.STALE_MARGIN is 60 s past the deadline
    os.utime(old, (time.time() - age, time.time() - age))
    with caplog.at_level(logging.INFO, logger="training.data.download"):
        download_all([], tmp_path, CFG)
    assert (old.exists(), new.exists()) == (False, True)
    assert caplog.messages == ["removed 1 unfinished download(s) left by a killed run"]


def test_backoff_doubles_with_jitter_and_retry_after_is_taken_up_to_the_limit():
    random.seed(0)
    for attempt in range(4):
        waits = [download._retry_wait(None, attempt, CFG) for _ in range(200)]
        # 0.5 s doubled per attempt, times a uniform 0.5..1.5
        assert 0.25 * 2 ** attempt <= min(waits) < 0.3 * 2 ** attempt
        assert 0.7 * 2 ** attempt < max(waits) <= 0.75 * 2 ** attempt
    assert download._retry_wait(CFG.max_retry_after, 0, CFG) == CFG.max_retry_after
    assert download._retry_wait(CFG.max_retry_after + 0.1, 0, CFG) is None


def test_retry_failed_retries_only_failures_and_the_newest_row_wins(image_server, tmp_path):
    items = [("x", image_server.url("/good/retry/0.jpg")), ("x", image_server.url("/flaky/500-then-200.jpg")),
             ("x", image_server.url("/bad/html.jpg"))]
    cfg = CFG.replace(retries=0)
    image_server.reset()
    first = download_all(items, tmp_path, cfg, allow_address=loopback)
    assert [f.status for f in first] == ["ok", "failed", "rejected"] and first[1].reason == "http_500"
    second = download_all(items, tmp_path, cfg.replace(retry_failed=True), allow_address=loopback)
    assert [f.status for f in second] == ["ok", "ok", "rejected"]
    assert (image_server.hits["/good/retry/0.jpg"], image_server.hits["/flaky/500-then-200.jpg"],
            image_server.hits["/bad/html.jpg"]) == (1, 2, 2)
    assert download_all(items, tmp_path, cfg, allow_address=loopback) == second
    assert sum(image_server.hits.values()) == 5


def test_a_rerun_fetches_a_deleted_file_again(image_server, tmp_path):
    items = [("x", url) for url in good_urls(image_server, "deleted", 2)]
    first = download_all(items, tmp_path, CFG, allow_address=loopback)
    (tmp_path / first[0].file).unlink()
    image_server.reset()
    assert download_all(items, tmp_path, CFG, allow_address=loopback) == first
    assert dict(image_server.hits) == {"/good/deleted/0.jpg": 1}


def test_a_repeated_item_is_fetched_once(image_server, tmp_path):
    url = image_server.url("/good/repeat/0.png")
    image_server.reset()
    a, b = download_all([("x", url), ("x", url)], tmp_path, CFG, allow_address=loopback)
    assert a == b and a.status == "ok" and image_server.hits["/good/repeat/0.png"] == 1


def test_works_inside_a_running_event_loop(image_server, tmp_path):
    async def notebook_cell():
        return download_all([("x", image_server.url("/good/loop/0.jpg"))], tmp_path, CFG, allow_address=loopback)
    assert asyncio.run(notebook_cell())[0].status == "ok"


@pytest.mark.parametrize("label", ["", ".", "..", "../escape", "a/b", "a\\b"])
def test_a_label_that_is_not_a_folder_name_is_refused_before_downloading(image_server, tmp_path, label):
    image_server.reset()
    with pytest.raises(StageError, match="folder name"):
        download_all([(label, image_server.url("/good/label/0.jpg"))], tmp_path, CFG, allow_address=loopback)
    assert sum(image_server.hits.values()) == 0


@pytest.mark.parametrize("name,ext", [
    ("baseline.jpg", ".jpeg"), ("rgb.png", ".png"), ("palette.gif", ".gif"), ("lossy.webp", ".webp"),
    ("rgb.bmp", ".bmp"), ("lzw.tif", ".tiff"), ("iphone.heic", ".heif"), ("photo.avif", ".avif"),
    ("photo.jp2", ".jpeg2000"), ("grey.pgm", ".ppm"), ("layers.psd", ".psd"), ("icon.ico", ".ico"),
    ("photo.qoi", ".qoi"), ("photo.sgi", ".sgi"), ("photo.pcx", ".pcx"), ("progressive_no_extension", ".jpeg"),
    ("really_a_jpeg.png", ".jpeg"),
    ("notes.txt", None), ("page.jpg", None), ("drawing.svg", None), ("paper.pdf", None), ("vector.eps", None),
])
def test_downloads_are_recognised_by_the_same_formats_the_clean_stage_reads(name, ext):
    """The format comes from the file's first bytes (serving.imaging.identify), never from its name."""
    assert _sniff(corpus()[name].data[:SNIFF_BYTES]) == ext


@pytest.mark.parametrize("head,ext", [
    (b"\xff\xd8", ""), (b"RIFF\x10\0", ""), (b"", ""),  # too short to tell yet
    (b"RIFF\x10\0\0\0WAVEfmt ", None), (b"<!DOCTYPE html>", None), (b"<svg xmlns", None), (b"%PDF-1.7", None),
])
def test_signature_sniffing_of_short_heads(head, ext):
    assert _sniff(head) == ext


@pytest.mark.parametrize("value,seconds", [
    ("3", 3.0), ("0", 0.0), ("-4", 0.0), ("1.5", 1.5), (None, None), ("", None), ("soon", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past means now
])
def test_retry_after_header(value, seconds):
    assert _retry_after(value) == seconds


@pytest.mark.parametrize("zone", ["GMT", "+0000", "-0000"])  # -0000 reads as a date without a time zone
def test_retry_after_a_future_date(zone):
    when = time.strftime(f"%a, %d %b %Y %H:%M:%S {zone}", time.gmtime(time.time() + 120))
    assert 100 < _retry_after(when) <= 121


INTERRUPTED = """
import json, sys
from pathlib import Path
from training.config import Config
from training.data.download import download_all
try:
    download_all([tuple(i) for i in json.loads(sys.argv[2])], Path(sys.argv[1]),
                 Config(allow_private_urls=True, deadline=60))
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_mid_download_leaves_no_temp_file_and_a_valid_log(image_server, tmp_path):
    items = [("good", url) for url in good_urls(image_server, "interrupt", 4)]
    items.append(("drip", image_server.url("/slow/drip.jpg")))
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(tmp_path), json.dumps(items)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Interrupt once the good images are logged and the drip's temp file exists to be cleaned up.
        _wait_for(lambda: _logged(tmp_path) == 4 and list((tmp_path / "raw" / "drip").glob("*.part"))
                  or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.stdout.read().decode()
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=20)[0].decode()
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    assert not list(tmp_path.rglob("*.part"))
    with open(tmp_path / "downloads.csv", newline="") as f:
        rows = [Fetched(**row) for row in csv.DictReader(f)]
    assert sorted(r.url for r in rows) == sorted(url for _, url in items[:4])
    assert all(r.status == "ok" and (tmp_path / r.file).is_file() for r in rows)
    image_server.reset()
    download_all(items[:4], tmp_path, CFG, allow_address=loopback)
    assert sum(image_server.hits.values()) == 0


def test_a_killed_run_keeps_its_log_rows_and_the_next_run_clears_its_temp_file(image_server, tmp_path):
    items = [("good", url) for url in good_urls(image_server, "killed", 4)]
    items.append(("drip", image_server.url("/slow/drip.jpg")))
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(tmp_path), json.dumps(items)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _logged(tmp_path) == 4 and list((tmp_path / "raw" / "drip").glob("*.part")), 20)
    finally:
        proc.kill()  # SIGKILL: no cleanup runs, so only what was flushed survives
        proc.wait(timeout=20)
    with open(tmp_path / "downloads.csv", newline="") as f:
        assert sorted(row["url"] for row in csv.DictReader(f)) == sorted(url for _, url in items[:4])
    [part] = (tmp_path / "raw" / "drip").glob("*.part")
    os.utime(part, (time.time() - 3600, time.time() - 3600))
    download_all(items[:4], tmp_path, CFG, allow_address=loopback)
    assert not part.exists()


def test_a_torn_last_log_row_is_fetched_again_and_the_log_stays_valid(image_server, tmp_path, caplog):
    done, torn = good_urls(image_server, "torn", 2)
    first = download_all([("x", done)], tmp_path, CFG, allow_address=loopback)
    with open(tmp_path / "downloads.csv", "a") as f:
        f.write(f"x,{torn},o")  # what a power cut mid-row leaves
    image_server.reset()
    with caplog.at_level(logging.WARNING, logger="training.data.download"):
        second = download_all([("x", done), ("x", torn)], tmp_path, CFG, allow_address=loopback)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'downloads.csv'}: ignored 1 unreadable row(s), probably from an interrupted run; "
        "those URLs will be downloaded again"]
    assert second[0] == first[0] and second[1].status == "ok"
    assert dict(image_server.hits) == {"/good/torn/1.jpg": 1}
    with open(tmp_path / "downloads.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "o", "ok"] and rows[1]["reason"] is None


def _logged(data_dir: Path) -> int:
    """Rows in downloads.csv so far (a row is flushed whole, so counting lines is safe)."""
    path = data_dir / "downloads.csv"
    return max(0, path.read_text().count("\n") - 1) if path.exists() else 0


def _wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
