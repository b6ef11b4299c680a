"""Shared fixtures. Every server here listens on 127.0.0.1 only: tests never reach the network."""
import atexit
import configparser
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
from tests.tiny_model import tiny_model, trains_its_own_model  # noqa: E402,F401  (tiny_model: the session's one)

# Debian's Chromium, driven by Playwright (never `playwright install`: it downloads a browser).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "tests" / "artifacts"  # kept after the run (git-ignored) so a person can look


def pytest_configure(config):
    """Under mutmut, collect whole test files; pytest_collection_modifyitems then picks the tests to run.

    For a mutant of training/, which trains the tiny model again, the files of tests/train/ in setup.cfg's
    selection too (with its -k), whose tests check what training made: mutmut credits everything the tiny model's
    fixture did to the one test that first asked for it, which can be a serving test."""
    mutant = _mutant_under_test()
    if mutant:
        config.stash[_NAMED] = set(config.args)
        files = {arg.split("::")[0] for arg in config.args}
        if trains_its_own_model(mutant):
            selection, keyword = _mutmut_selection()
            files |= {name for name in selection if name.startswith("tests/train/")}
            config.option.keyword = keyword
        config.args[:] = sorted(files)


def pytest_collection_modifyitems(config, items):
    """Under mutmut, run the tests it named plus every test sharing a module-scoped fixture with one of them.

    mutmut (docs/mutation.md) runs a mutant against the tests that called the mutated function while it
    recorded them. Work done in a module-scoped fixture is recorded against the first test that asked for
    the fixture only, so a mutant that changes, say, the outcome of the fifth URL of download's shared run
    would be checked by the first route's assertion alone, and survive. The other users of that fixture
    check what it did too, so they run as well; so do the tiny model's, for a mutant of training/ (the
    model it trains again is what they check). Outside mutmut this does nothing.
    """
    named = config.stash.get(_NAMED, None)
    if named is None:
        return
    retrained = trains_its_own_model(_mutant_under_test())
    chosen = [item for item in items if item.nodeid in named or item.nodeid.split("::")[0] in named]
    shared = set().union(*(_shared_fixtures(item, retrained) for item in chosen))
    keep = [item for item in items if item in chosen or shared & _shared_fixtures(item, retrained)]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


_NAMED = pytest.StashKey[set]()


def _mutmut_selection() -> tuple[list[str], str]:
    """The test files of setup.cfg's mutmut selection, and its -k expression."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    args = [line.strip() for line in parser["mutmut"]["pytest_add_cli_args_test_selection"].splitlines()]
    keyword = args[args.index("-k") + 1] if "-k" in args else ""  # one argument a line
    return [arg for arg in args if arg.endswith(".py")], keyword


def _mutant_under_test() -> str:
    name = os.environ.get("MUTANT_UNDER_TEST", "")  # mutmut's variable; its own runs use other values
    return name if "__mutmut_" in name else ""


def _shared_fixtures(item, retrained: bool) -> set[tuple[str, str]]:
    """The module- and class-scoped fixtures item uses, by file; and the tiny model (session-scoped) where the
    mutant trains it again, so that every test of what training made checks it, not the first one alone."""
    defs = item._fixtureinfo.name2fixturedefs
    shared = {(str(item.path), name) for name in item.fixturenames
              if defs.get(name) and defs[name][-1].scope in ("module", "class")}
    return shared | {("session", "tiny_model")} if retrained and "tiny_model" in item.fixturenames else shared


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
