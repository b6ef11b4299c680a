"""training/data/search.py through an injected engine: canned results, retries, empty answers, the cache."""
from __future__ import annotations

import os
import socket

import pytest
from ddgs.exceptions import DDGSException, TimeoutException

from training.config import Config
from training.data.search import ddgs_engine, search_images
from training.errors import StageError


class CannedEngine:
    """A search engine answering from a dict, failing the first `fail` calls per query."""

    def __init__(self, answers: dict[str, list[str]], fail: int = 0, error: type[Exception] = DDGSException):
        self.answers, self.fail, self.error = answers, fail, error
        self.calls: list[tuple[str, int]] = []

    def __call__(self, query: str, max_results: int) -> list[str]:
        self.calls.append((query, max_results))
        if sum(q == query for q, _ in self.calls) <= self.fail:
            raise self.error(f"rate limited: {query}")
        return self.answers.get(query, [])[:max_results]


@pytest.fixture
def cfg(tmp_path):
    return Config(labels=("grizzly", "black"), query="{label} bear", max_images=3, data=tmp_path)


def test_results_are_deduplicated_capped_and_labelled(cfg):
    engine = CannedEngine({"grizzly bear": ["http://a/1.jpg", "http://a/1.jpg", " http://a/2.jpg", "", "http://a/3.jpg"],
                           "black bear": ["http://b/1.jpg"]})
    pauses = []
    found = search_images(cfg, engine, sleep=pauses.append)
    assert found == {"grizzly": ["http://a/1.jpg", "http://a/2.jpg"], "black": ["http://b/1.jpg"]}
    assert engine.calls == [("grizzly bear", 3), ("black bear", 3)]
    assert pauses == [cfg.search_pause]  # a polite pause between the two queries, none before the first


@pytest.mark.parametrize("error", [DDGSException, TimeoutException])
def test_transient_errors_are_retried_with_growing_backoff(cfg, error):
    engine = CannedEngine({"grizzly bear": ["http://a/1.jpg"], "black bear": ["http://b/1.jpg"]}, fail=2, error=error)
    pauses = []
    found = search_images(cfg, engine, sleep=pauses.append)
    assert found["grizzly"] == ["http://a/1.jpg"]
    assert len(engine.calls) == 6
    backoffs = [p for p in pauses if p != cfg.search_pause]
    assert len(backoffs) == 4 and backoffs[0] < backoffs[1]


def test_search_gives_up_after_bounded_retries_and_suggests_urls(cfg):
    engine = CannedEngine({}, fail=99)
    with pytest.raises(StageError, match=r"failed 4 times.*--urls"):
        search_images(cfg, engine, sleep=lambda s: None)
    assert len(engine.calls) == cfg.search_retries


def test_a_label_with_no_results_names_the_label_and_suggests_urls(cfg):
    engine = CannedEngine({"grizzly bear": ["http://a/1.jpg"]})
    with pytest.raises(StageError, match=r"'black'.*--urls"):
        search_images(cfg, engine, sleep=lambda s: None)


def test_rerun_answers_from_the_disk_cache(cfg):
    answers = {"grizzly bear": ["http://a/1.jpg"], "black bear": ["http://b/1.jpg"]}
    first = search_images(cfg, CannedEngine(answers), sleep=lambda s: None)
    again = CannedEngine({})
    assert search_images(cfg, again, sleep=lambda s: None) == first
    assert again.calls == []
    # asking for more than the cache holds queries again
    more = CannedEngine(answers)
    search_images(cfg.replace(max_images=10), more, sleep=lambda s: None)
    assert len(more.calls) == 2


def test_empty_answers_are_not_cached(cfg):
    with pytest.raises(StageError):
        search_images(cfg, CannedEngine({"grizzly bear": ["http://a/1.jpg"]}), sleep=lambda s: None)
    engine = CannedEngine({"grizzly bear": ["http://a/1.jpg"], "black bear": ["http://b/9.jpg"]})
    assert search_images(cfg, engine, sleep=lambda s: None)["black"] == ["http://b/9.jpg"]
    assert engine.calls == [("black bear", 3)]


def _online() -> bool:
    try:
        socket.create_connection(("duckduckgo.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(os.environ.get("CI") == "true" or not _online(), reason="needs the internet")
def test_real_ddgs_returns_image_urls():
    urls = ddgs_engine("grizzly bear", 5)
    assert urls and all(u.startswith("http") for u in urls)
