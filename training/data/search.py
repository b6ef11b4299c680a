"""Find image URLs for each label with an image-search engine, retrying politely and caching on disk.

    python -m training data --labels grizzly black teddy --query "{label} bear" --max-images 150

Only this module talks to the search engine. `engine` is injectable, so tests hand in canned results.
"""
from __future__ import annotations

import json
import logging
import random
import re
import time
from pathlib import Path
from typing import Callable

from training.config import DEFAULT_LABELS, Config
from training.errors import StageError

log = logging.getLogger(__name__)

# (query, max_results) -> image URLs, best first.
SearchEngine = Callable[[str, int], list[str]]


def ddgs_engine(query: str, max_results: int) -> list[str]:
    """Image URLs for `query` from ddgs, the maintained successor of duckduckgo_search."""
    from ddgs import DDGS
    from ddgs.exceptions import DDGSException

    try:
        results = DDGS(timeout=10).images(query, max_results=max_results, backend="auto")
    except DDGSException as exc:
        # ddgs reports "nothing found" as an exception; that is an answer, not a fault to retry.
        if "no results found" in str(exc).lower():
            return []
        raise
    return [r["image"] for r in results if r.get("image")]


def search_images(cfg: Config, engine: SearchEngine | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> dict[str, list[str]]:
    """Return deduplicated image URLs per label, from the cache in data/<name>/search/ when present."""
    engine = engine or ddgs_engine
    cache_dir = cfg.data_dir / "search"
    found: dict[str, list[str]] = {}
    queried = False
    for label in cfg.labels or DEFAULT_LABELS:
        query = cfg.query.format(label=label)
        cached = _read_cache(cache_dir, query, cfg.max_images)
        if cached is None:
            if queried:
                sleep(cfg.search_pause)  # image search rate-limits bursts of queries
            cached = _unique(_search_with_retries(engine, query, cfg, sleep))[: cfg.max_images]
            queried = True
            if cached:  # an empty answer is not cached: the next run should ask again
                _write_cache(cache_dir, query, cfg.max_images, cached)
        if not cached:
            raise StageError(
                f"image search found nothing for label {label!r} (query {query!r}). Try another --query, "
                "or export image URLs from your browser and pass them with --urls FILE (see README)")
        log.info("search: %-20s %4d URLs", label, len(cached))
        found[label] = cached
    return found


def _search_with_retries(engine: SearchEngine, query: str, cfg: Config, sleep: Callable[[float], None]) -> list[str]:
    from ddgs.exceptions import DDGSException, TimeoutException

    for attempt in range(1, cfg.search_retries + 1):
        try:
            return engine(query, cfg.max_images)
        except (DDGSException, TimeoutException) as exc:
            if attempt == cfg.search_retries:
                raise StageError(
                    f"image search for {query!r} failed {attempt} times ({type(exc).__name__}: {exc}). "
                    "Search may be blocked or rate-limited from this network: wait and rerun, or export "
                    "image URLs from your browser and pass them with --urls FILE (see README)") from exc
            wait = 2.0 ** attempt + random.uniform(0, 1)
            log.warning("search for %r failed (%s: %s); retrying in %.0f s", query, type(exc).__name__, exc, wait)
            sleep(wait)
    return []


def _unique(urls: list[str]) -> list[str]:
    return list(dict.fromkeys(u.strip() for u in urls if u and u.strip()))


def _cache_path(cache_dir: Path, query: str) -> Path:
    return cache_dir / (re.sub(r"[^a-zA-Z0-9]+", "_", query).strip("_").lower() + ".json")


def _read_cache(cache_dir: Path, query: str, max_results: int) -> list[str] | None:
    path = _cache_path(cache_dir, query)
    if not path.exists():
        return None
    cached = json.loads(path.read_text())
    # A cache made with a smaller --max-images can't answer a bigger request; one made with a bigger one can.
    if cached["query"] != query or cached["max_results"] < max_results:
        return None
    return cached["urls"][:max_results]


def _write_cache(cache_dir: Path, query: str, max_results: int, urls: list[str]) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = _cache_path(cache_dir, query)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"query": query, "max_results": max_results, "urls": urls}, indent=1))
    tmp.replace(path)
