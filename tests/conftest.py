"""Shared fixtures. Every server here listens on 127.0.0.1 only: tests never reach the network."""
import atexit
import os
import shutil
import tempfile

# Before anything imports gradio: a test run must not phone home.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
# The models onnxruntime optimizes (serving/model.py) go to a folder of this run's own, not the machine's.
os.environ["ORT_CACHE_DIR"] = tempfile.mkdtemp(prefix="ort-cache-")
atexit.register(shutil.rmtree, os.environ["ORT_CACHE_DIR"], ignore_errors=True)

if "MUTANT_UNDER_TEST" in os.environ:  # under mutmut, which forks a process per mutant (docs/mutation.md)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # an OpenMP thread team does not survive a fork

import pytest  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from tests.image_server import ImageServer  # noqa: E402
from tests.live_app import ROOT  # noqa: E402
from tests.tiny_model import tiny_model  # noqa: E402,F401  (the session's one trained tiny model)

# Debian's Chromium, driven by Playwright (never `playwright install`: it downloads a browser).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "tests" / "artifacts"  # kept after the run (git-ignored) so a person can look


def pytest_configure(config):
    """Under mutmut, collect whole test files; pytest_collection_modifyitems then picks the tests to run."""
    if _mutant_under_test():
        config.stash[_NAMED] = set(config.args)
        config.args[:] = sorted({arg.split("::")[0] for arg in config.args})


def pytest_collection_modifyitems(config, items):
    """Under mutmut, run the tests it named plus every test sharing a module-scoped fixture with one of them.

    mutmut (docs/mutation.md) runs a mutant against the tests that called the mutated function while it
    recorded them. Work done in a module-scoped fixture is recorded against the first test that asked for
    the fixture only, so a mutant that changes, say, the outcome of the fifth URL of download's shared run
    would be checked by the first route's assertion alone, and survive. The other users of that fixture
    check what it did too, so they run as well. Outside mutmut this does nothing.
    """
    named = config.stash.get(_NAMED, None)
    if named is None:
        return
    chosen = [item for item in items if item.nodeid in named or item.nodeid.split("::")[0] in named]
    shared = set().union(*(_module_fixtures(item) for item in chosen))
    keep = [item for item in items if item in chosen or shared & _module_fixtures(item)]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


_NAMED = pytest.StashKey[set]()


def _mutant_under_test() -> str:
    name = os.environ.get("MUTANT_UNDER_TEST", "")  # mutmut's variable; its own runs use other values
    return name if "__mutmut_" in name else ""


def _module_fixtures(item) -> set[tuple[str, str]]:
    defs = item._fixtureinfo.name2fixturedefs
    return {(str(item.path), name) for name in item.fixturenames
            if defs.get(name) and defs[name][-1].scope in ("module", "class")}


@pytest.fixture(scope="session", autouse=True)
def _mutmut_removes_its_temporary_folders(tmp_path_factory):
    """Under mutmut, delete this session's temporary folders as it ends. mutmut ends each mutant's process with
    os._exit, which skips the exit handlers: ours (ORT_CACHE_DIR, above) and the one that lets a later pytest
    delete old sessions' folders. A few hundred mutants' copies of the tiny model filled the disk."""
    yield
    if "MUTANT_UNDER_TEST" in os.environ:
        shutil.rmtree(tmp_path_factory.getbasetemp(), ignore_errors=True)
        shutil.rmtree(os.environ["ORT_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def image_server():
    """One loopback image server for the whole run; tests that count hits call reset() first."""
    with ImageServer() as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for one test module. Not per session: Playwright's sync API keeps an event loop
    running in the main thread while it is open, which would break tests that call asyncio.run()."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-background-networking"])
        yield browser
        browser.close()
