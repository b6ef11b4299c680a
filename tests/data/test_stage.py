"""The whole data stage (training/data/stage.py) against the loopback image server: every URL accounted for."""
from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from training.config import DEFAULT_OTHER_QUERIES, Config
from training.data.manifest import read_manifest
from training.data.stage import build_dataset
from training.errors import StageError

# (label, path on the image server, expected status, expected reason)
CASES = [
    ("cats", "/bad/html.jpg", "rejected", "not_image"),
    ("cats", "/bad/html-as-image.jpg", "rejected", "not_image"),
    ("cats", "/svg/image.svg", "rejected", "not_image"),
    ("cats", "/bad/empty.jpg", "rejected", "empty"),
    ("cats", "/bad/truncated.jpg", "rejected", "truncated"),
    ("cats", "/bad/404.jpg", "failed", "http_404"),
    ("cats", "/flaky/500-then-200.jpg", "kept", ""),
    ("cats", "/flaky/429.jpg", "kept", ""),
    ("cats", "/slow/drip.jpg", "failed", "timeout"),
    ("cats", "/big/huge.jpg", "rejected", "too_large"),
    ("cats", "/redirect/loop", "failed", "too_many_redirects"),
    ("cats", "/redirect/private", "rejected", "private_address"),
    ("cats", "/redirect/ok", "kept", ""),
    ("cats", "/img/bomb.png", "rejected", "too_many_pixels"),
    ("cats", "/img/tiny.png", "rejected", "too_small"),
    ("cats", "/img/cmyk.jpg", "kept", ""),
    ("cats", "/img/16bit.png", "kept", ""),
    ("cats", "/img/rgba.png", "kept", ""),
    ("cats", "/img/animated.gif", "kept", ""),
    ("cats", "/img/exif-rotated.jpg", "kept", ""),
    ("cats", "/dup/a.jpg", "kept", ""),
    ("cats", "/dup/b.jpg", "duplicate", "same_bytes"),
    ("cats", "/dup/original.jpg", "kept", ""),
    ("cats", "/dup/resized.jpg", "duplicate", "near_duplicate"),
    ("cats", "/dup/shared.jpg", "rejected", "same_image_in_two_labels"),
    ("dogs", "/dup/shared.jpg", "rejected", "same_image_in_two_labels"),
    ("dogs", "/good/dogs/0.jpg", "duplicate", "same_url"),  # listed twice below
]
GOOD = {"cats": 12, "dogs": 12}


def _cfg(tmp_path, **changes) -> Config:
    base = Config(name="pets", data=tmp_path / "data", deadline=2.0, read_timeout=1.0, max_bytes=1_000_000,
                  retries=2, max_retry_after=5.0, min_per_label=10)
    return base.replace(**changes)


def _write_urls(path, server) -> list[tuple[str, str]]:
    rows = [(label, server.url(f"/good/{label}/{i}.{('jpg', 'png', 'webp', 'gif')[i % 4]}"))
            for label, n in GOOD.items() for i in range(n)]
    rows += [(label, server.url(p)) for label, p, _, _ in CASES]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("label", "url"), *rows])
    return rows


@pytest.fixture(scope="module")
def built(image_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data_stage")
    image_server.reset()
    cfg = _cfg(tmp, urls=tmp / "urls.csv")
    inputs = _write_urls(cfg.urls, image_server)
    summary = build_dataset(cfg, allow_address=lambda ip: ip.is_loopback)
    return cfg, inputs, summary


def test_every_input_has_one_manifest_row_in_order(built):
    cfg, inputs, _ = built
    rows = read_manifest(cfg.data_dir / "manifest.csv")
    assert [(r.label, r.url) for r in rows] == inputs


@pytest.mark.parametrize("label,path,status,reason", CASES)
def test_each_case_ends_with_the_right_status_and_reason(built, image_server, label, path, status, reason):
    cfg, _, _ = built
    rows = [r for r in read_manifest(cfg.data_dir / "manifest.csv") if (r.label, r.url) == (label, image_server.url(path))]
    assert (rows[-1].status, rows[-1].reason) == (status, reason)


def test_good_images_of_every_format_are_kept(built, image_server):
    cfg, _, _ = built
    rows = {}
    for r in read_manifest(cfg.data_dir / "manifest.csv"):
        rows.setdefault(r.url, r)  # the first listing; a repeat of the same URL is a same_url duplicate
    for label, n in GOOD.items():
        for i in range(n):
            row = rows[image_server.url(f"/good/{label}/{i}.{('jpg', 'png', 'webp', 'gif')[i % 4]}")]
            assert (row.status, row.reason) == ("kept", "")


def test_counts_add_up_and_match_the_manifest(built):
    cfg, inputs, summary = built
    rows = read_manifest(cfg.data_dir / "manifest.csv")
    assert summary == json.loads((cfg.data_dir / "summary.json").read_text())
    for label, c in summary["labels"].items():
        assert c["found"] == c["kept"] + c["duplicate"] + c["rejected"] + c["failed"]
        assert c["found"] == sum(r.label == label for r in rows)
        assert c["kept"] == sum(r.label == label and r.status == "kept" for r in rows)
    assert summary["total"]["found"] == len(inputs)


def test_images_folder_holds_exactly_the_kept_files_all_clean_jpegs(built):
    cfg, _, _ = built
    rows = read_manifest(cfg.data_dir / "manifest.csv")
    kept = {r.file for r in rows if r.status == "kept"}
    on_disk = {str(p.relative_to(cfg.data_dir)) for p in (cfg.data_dir / "images").rglob("*") if p.is_file()}
    assert on_disk == kept
    for rel in kept:
        with Image.open(cfg.data_dir / rel) as img:
            assert (img.format, img.mode) == ("JPEG", "RGB") and max(img.size) <= cfg.max_side
    assert not list(cfg.data_dir.rglob("*.part"))


def _kept_image(built, image_server, path) -> Image.Image:
    cfg, _, _ = built
    row = next(r for r in read_manifest(cfg.data_dir / "manifest.csv") if r.url == image_server.url(path))
    return Image.open(cfg.data_dir / row.file)


def test_exif_rotated_photo_is_stored_upright(built, image_server):
    img = _kept_image(built, image_server, "/img/exif-rotated.jpg")
    assert img.size == (100, 200)
    r, g, b = img.getpixel((50, 10))
    assert r > 200 and g < 80  # the red band is at the top once upright


def test_transparency_is_blended_onto_white_and_16_bit_is_rescaled(built, image_server):
    rgba = _kept_image(built, image_server, "/img/rgba.png")
    assert min(rgba.getpixel((2, 2))) > 245 and rgba.getpixel((100, 75))[0] > 200
    grey = _kept_image(built, image_server, "/img/16bit.png").convert("L")
    left, right = grey.getpixel((5, 75)), grey.getpixel((195, 75))
    assert left < 30 and right > 220  # a full gradient, not clipped to white


def test_animated_gif_keeps_its_first_frame(built, image_server):
    r, g, b = _kept_image(built, image_server, "/img/animated.gif").convert("RGB").getpixel((100, 75))
    assert b > 150 and r < 100


def test_duplicate_rows_point_at_the_kept_file(built, image_server):
    cfg, _, _ = built
    rows = {r.url: r for r in read_manifest(cfg.data_dir / "manifest.csv")}
    assert rows[image_server.url("/dup/b.jpg")].file == rows[image_server.url("/dup/a.jpg")].file
    assert rows[image_server.url("/dup/resized.jpg")].file == rows[image_server.url("/dup/original.jpg")].file


def test_rerun_changes_nothing_and_downloads_nothing(built, image_server):
    cfg, _, summary = built
    manifest = (cfg.data_dir / "manifest.csv").read_bytes()
    files = {p: p.stat().st_mtime_ns for p in (cfg.data_dir / "images").rglob("*.jpg")}
    hits = dict(image_server.hits)
    assert build_dataset(cfg, allow_address=lambda ip: ip.is_loopback) == summary
    assert image_server.hits == hits
    assert (cfg.data_dir / "manifest.csv").read_bytes() == manifest
    assert {p: p.stat().st_mtime_ns for p in (cfg.data_dir / "images").rglob("*.jpg")} == files


def test_too_few_images_names_the_label(image_server, tmp_path):
    urls = tmp_path / "few.csv"
    rows = [("big", image_server.url(f"/good/big/{i}.jpg")) for i in range(4)]
    rows += [("small", image_server.url(f"/good/small/{i}.png")) for i in range(2)] + [("small", image_server.url("/bad/404.jpg"))]
    with urls.open("w", newline="") as f:
        csv.writer(f).writerows([("label", "url"), *rows])
    cfg = _cfg(tmp_path, urls=urls, min_per_label=3)
    with pytest.raises(StageError, match=r"'small' kept 2 .*--min-per-label 3") as caught:
        build_dataset(cfg, allow_address=lambda ip: ip.is_loopback)
    assert "failed:http_404 (1)" in str(caught.value) and "--allow-private-urls" not in str(caught.value)
    assert len(read_manifest(cfg.data_dir / "manifest.csv")) == len(rows)  # the manifest still says why


def test_urls_all_refused_as_private_say_so(image_server, tmp_path):
    urls = tmp_path / "local.csv"
    rows = [(label, image_server.url(f"/good/{label}/{i}.jpg")) for label in ("a", "b") for i in range(3)]
    with urls.open("w", newline="") as f:
        csv.writer(f).writerows([("label", "url"), *rows])
    with pytest.raises(StageError, match=r"rejected:private_address \(6\).*--allow-private-urls is for testing"):
        build_dataset(_cfg(tmp_path, urls=urls, min_per_label=3))  # the default policy: loopback refused


@pytest.mark.parametrize("flag", ["urls", "from_folder", "archive"])
def test_a_missing_input_is_refused_and_leaves_no_data_folder(flag, tmp_path):
    value = {"urls": tmp_path / "nope.csv", "from_folder": tmp_path / "nope", "archive": str(tmp_path / "nope.zip")}
    cfg = _cfg(tmp_path, **{flag: value[flag]})
    with pytest.raises(StageError, match="nope"):
        build_dataset(cfg)
    assert not cfg.data_dir.exists()


def test_a_failed_rerun_keeps_the_data_folder(image_server, tmp_path):
    cfg = _cfg(tmp_path, urls=tmp_path / "nope.csv")
    cfg.data_dir.mkdir(parents=True)
    with pytest.raises(StageError):
        build_dataset(cfg)
    assert cfg.data_dir.is_dir()


def test_search_results_flow_through_download_and_clean(image_server, tmp_path):
    def engine(query, n):
        label = query.split()[0]
        return [image_server.url(f"/good/{label}/{i}.jpg") for i in range(n)]

    cfg = _cfg(tmp_path, labels=("lynx", "puma"), query="{label} cat", max_images=10, search_pause=0.0)
    summary = build_dataset(cfg, engine=engine, allow_address=lambda ip: ip.is_loopback)
    assert {k: v["kept"] for k, v in summary["labels"].items()} == {"lynx": 10, "puma": 10}
    assert summary["source"] == "image search (ddgs): '{label} cat'"


def test_default_policy_refuses_loopback_urls(image_server, tmp_path):
    urls = tmp_path / "one.txt"
    urls.write_text(image_server.url("/good/x/0.jpg") + "\n")
    hits = sum(image_server.hits.values())
    cfg = _cfg(tmp_path, urls=urls, labels=("x",), min_per_label=0)
    build_dataset(cfg)
    row, = read_manifest(cfg.data_dir / "manifest.csv")
    assert (row.status, row.reason) == ("rejected", "private_address")
    assert sum(image_server.hits.values()) == hits


def test_photos_of_none_of_the_labels_go_to_their_own_folder_never_into_images(image_server, tmp_path, caplog):
    """--other-queries: searched, downloaded and cleaned like the rest, into DATA/other/ (its own manifest), for
    train to measure "none of these" on; a search that finds nothing there only means it isn't measured."""
    def engine(query, n):
        if query == "nothing here":
            return []
        return [image_server.url(f"/good/{query.split()[0]}/{i}.jpg") for i in range(n)]

    cfg = _cfg(tmp_path, labels=("lynx", "puma"), query="{label} cat", max_images=6, search_pause=0.0,
               min_per_label=0, other_queries=("street", "food"), other_per_query=4)
    summary = build_dataset(cfg, engine=engine, allow_address=lambda ip: ip.is_loopback)
    assert set(summary["labels"]) == {"lynx", "puma"}
    assert sorted(p.name for p in (cfg.data_dir / "images").iterdir()) == ["lynx", "puma"]
    other = cfg.data_dir / "other"
    assert {p.name: len(list(p.iterdir())) for p in (other / "images").iterdir()} == {"street": 4, "food": 4}
    assert [row.status for row in read_manifest(other / "manifest.csv")] == ["kept"] * 8

    quiet = _cfg(tmp_path / "again", labels=("lynx",), max_images=3, search_pause=0.0, min_per_label=0,
                 other_queries=("nothing here",))
    build_dataset(quiet, engine=engine, allow_address=lambda ip: ip.is_loopback)
    assert "no photos of none of the labels" in caplog.text and not (quiet.data_dir / "other" / "images").exists()


def test_the_bears_search_also_fetches_photos_of_everything_else(tmp_path):
    from training.data.stage import other_queries

    assert other_queries(Config()) == DEFAULT_OTHER_QUERIES
    assert other_queries(Config(labels=("cat", "dog"))) == ()
    assert other_queries(Config(from_folder=tmp_path)) == ()
    assert other_queries(Config(labels=("cat",), other_queries=("tree",))) == ("tree",)
