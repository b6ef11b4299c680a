"""serving/ort_cache.py: this machine's optimized copy of a model, and how the app still serves without one."""
from __future__ import annotations

import errno
import inspect
import json
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

import onnxruntime as ort
import pytest
from onnxruntime.capi import onnxruntime_pybind11_state

from serving.model import Classifier, ModelFolderError
from serving.ort_cache import ORT_ERRORS, optimized_copy


@pytest.fixture
def folder(tiny_model, tmp_path) -> Path:
    """A model folder of this test's own, so its model.onnx can be changed."""
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("model.onnx", "config.json", "novelty_features.npy"):
        shutil.copyfile(tiny_model.folder / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def image_file(tiny_model):
    return next((tiny_model.data / "images" / "square").iterdir())


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_optimized_model_is_cached_and_answers_the_same(folder, image_file, tmp_path):
    cache = tmp_path / "cache"
    cold = Classifier.from_folder(folder, cache)
    cached = list(cache.glob("*.onnx"))
    assert len(cached) == 1 and not list(cache.glob("*.part"))
    assert cold.session._model_path == str(cached[0])  # loaded from the optimized copy, not model.onnx
    written = cached[0].stat()
    warm = Classifier.from_folder(folder, cache)
    assert list(cache.glob("*.onnx")) == cached
    assert (cached[0].stat().st_ino, cached[0].stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # reused
    assert warm.classify(image_file) == pytest.approx(cold.classify(image_file), abs=1e-6)
    # ...and the same answer as onnxruntime optimizing model.onnx itself, the usual way
    plain = Classifier(ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]),
                       json.loads((folder / "config.json").read_text()))
    assert warm.classify(image_file) == pytest.approx(plain.classify(image_file), abs=1e-6)


def test_without_a_cache_folder_nothing_is_written(folder, image_file):
    """cache_dir=None optimizes in memory, whatever ORT_CACHE_DIR says: serving reads no environment itself."""
    env_cache = Path(os.environ["ORT_CACHE_DIR"])  # tests/conftest.py's, set for the whole run
    before = set(env_cache.rglob("*"))
    clf = Classifier.from_folder(folder)
    assert clf.session._model_path == str(folder / "model.onnx")
    assert sum(clf.classify(image_file).values()) == pytest.approx(1)
    assert set(env_cache.rglob("*")) == before
    assert set(folder.iterdir()) == {folder / "model.onnx", folder / "config.json", folder / "novelty_features.npy"}


def test_a_changed_model_file_is_optimized_afresh(folder, tiny_model, tmp_path):
    cache = tmp_path / "cache"
    Classifier.from_folder(folder, cache)
    before = list(cache.glob("*.onnx"))
    os.utime(folder / "model.onnx", ns=(1, 1))  # as a re-export or a new download would
    again = Classifier.from_folder(folder, cache)
    after = list(cache.glob("*.onnx"))
    assert len(after) == 1 and after != before  # optimized afresh, and the stale copy is gone: no pile-up
    assert again.session._model_path == str(after[0])
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    Classifier.from_folder(other, cache)  # another model folder keeps its own copy
    assert len(list(cache.glob("*.onnx"))) == 2


def _read_only_folder(path: Path, monkeypatch) -> Path:
    path.mkdir()
    path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(path, os.W_OK):  # root ignores folder modes: give the refusal the kernel gives everyone else
        mkstemp = tempfile.mkstemp

        def refuse(*args, dir=None, **kwargs):
            if Path(dir) == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    return path


@pytest.mark.parametrize("where", ["read-only folder", "a file in the way", "under a file"])
def test_a_cache_that_cannot_be_written_still_serves(folder, image_file, tmp_path, monkeypatch, caplog, where):
    """Optimized in memory instead, with one warning that says so; nothing left behind."""
    (tmp_path / "file").write_text("a file where the cache folder should be")
    cache = {"read-only folder": lambda: _read_only_folder(tmp_path / "ro", monkeypatch),
             "a file in the way": lambda: tmp_path / "file",
             "under a file": lambda: tmp_path / "file" / "cache"}[where]()
    try:
        clf = Classifier.from_folder(folder, cache)
        assert clf.session._model_path == str(folder / "model.onnx")
        assert sum(clf.classify(image_file).values()) == pytest.approx(1)
        [warning] = _warnings(caplog)
        assert "no optimized copy" in warning and "optimizing it in memory" in warning
        assert not cache.is_dir() or list(cache.iterdir()) == []
    finally:
        if where == "read-only folder":
            cache.chmod(0o700)


def test_a_damaged_optimized_copy_is_dropped_and_rebuilt(folder, image_file, tmp_path, caplog):
    cache = tmp_path / "cache"
    expected = Classifier.from_folder(folder, cache).classify(image_file)
    [cached] = cache.glob("*.onnx")
    whole = cached.read_bytes()
    cached.write_bytes(whole[:1000])  # cut short, as a full disk or a crash could leave it
    clf = Classifier.from_folder(folder, cache)
    [warning] = _warnings(caplog)
    assert "dropping the unreadable optimized model" in warning
    assert cached.read_bytes() == whole  # written again at once...
    assert clf.session._model_path == str(cached)  # ...and served from
    assert clf.classify(image_file) == pytest.approx(expected, abs=1e-6)


def test_a_model_onnxruntime_refuses_leaves_no_copy_and_names_the_folder(folder, tmp_path, caplog):
    (folder / "model.onnx").write_bytes(b"not onnx")
    cache = tmp_path / "cache"
    assert optimized_copy(folder / "model.onnx", cache) is None
    [warning] = _warnings(caplog)
    assert "no optimized copy" in warning
    assert list(cache.iterdir()) == []  # not even the partial file
    with pytest.raises(ModelFolderError, match="onnxruntime can"):
        Classifier.from_folder(folder, cache)


@pytest.mark.parametrize("bug", ["cache_dir of the wrong type", "a stdlib call misused"])
def test_a_bug_in_the_cache_code_is_raised_not_swallowed(folder, tmp_path, monkeypatch, bug):
    """Only I/O errors and onnxruntime's refusals fall back to memory; a TypeError is a bug, and must show."""
    cache = tmp_path / "cache"
    if bug == "cache_dir of the wrong type":
        cache = 42
    else:
        def replace(src, dst):
            raise TypeError("replace() got an unexpected argument")

        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(TypeError):
        optimized_copy(folder / "model.onnx", cache)
    with pytest.raises(TypeError):
        Classifier.from_folder(folder, cache)
    if bug != "cache_dir of the wrong type":
        assert not list(cache.glob("*.part"))  # cleaned up on the way out all the same


def test_ort_errors_names_every_error_onnxruntime_defines():
    """A new onnxruntime that adds an error class would otherwise crash the app where the cache should fall back."""
    defined = {c for c in vars(onnxruntime_pybind11_state).values()
               if inspect.isclass(c) and issubclass(c, Exception)}
    assert defined and defined <= set(ORT_ERRORS)
    assert not any(issubclass(e, (TypeError, AttributeError, NameError)) for e in ORT_ERRORS)

