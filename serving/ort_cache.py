"""This machine's optimized copy of a model: onnxruntime optimizes it once, and every later start loads the result.

    Classifier.from_folder("models/bears", cache_dir=settings.ort_cache_dir)     # how the app uses it
    optimized_copy(Path("models/bears/model.onnx"), Path.home() / ".cache/serving-ort")   # the copy, or None

onnxruntime's graph optimizations (fusions, and the NCHWc layout that speeds up convolutions on this CPU) leave
memory behind in the process that runs them, more than the optimized model then needs. So they run once per
machine, in a throwaway session that writes the result, and the app loads that with optimizations off:
onnxruntime's "offline" mode. The cache only saves memory and time: a folder that can't be written, or a
model onnxruntime refuses, gets one warning and the model is optimized in memory instead. Any other error is
a bug, and is raised.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import tempfile
from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

log = logging.getLogger(__name__)

# And off again, in case the environment turned them on (see serving/__init__.py): a public demo sends nothing.
ort.disable_telemetry_events()

# What onnxruntime raises when it refuses a model or a file. These share no base class but Exception, which
# would hide our own bugs too, so they are named (those an older onnxruntime lacks are skipped).
ORT_ERRORS: tuple[type[Exception], ...] = tuple(getattr(_ort_state, name) for name in (
    "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException", "InvalidProtobuf",
    "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail", "ModelLoadCanceled", "ModelRequiresCompilation",
    "NotFound", "DeviceReset") if hasattr(_ort_state, name))
# The app serves on the CPU, and an optimized copy suits the provider that optimized it only.
PROVIDERS = ["CPUExecutionProvider"]


def optimized_copy(model_path: Path, cache_dir: Path) -> Path | None:
    """This machine's optimized copy of the model at `model_path`, written now if missing; None if it can't be."""
    try:
        cached = cache_dir / _copy_name(model_path)
        if not cached.exists():
            _write(model_path, cached)
        return cached
    except (OSError, *ORT_ERRORS) as exc:  # a read-only or full disk, no home folder, a model onnxruntime refuses
        log.warning("no optimized copy of %s in %s (%s); optimizing it in memory", model_path, cache_dir, exc)
        return None


def cached_session(model_path: Path, cache_dir: Path, options: ort.SessionOptions) -> ort.InferenceSession | None:
    """A session on the optimized copy, with `options` (optimizations off: it is optimized), or None if none loads.

    A copy onnxruntime can't load (cut short by a crash or a full disk) is dropped and written again, once.
    """
    for _ in range(2):
        cached = optimized_copy(model_path, cache_dir)
        if cached is None:
            return None
        try:
            return ort.InferenceSession(str(cached), sess_options=options, providers=PROVIDERS)
        except ORT_ERRORS as exc:
            log.warning("dropping the unreadable optimized model %s (%s)", cached, exc)
            if not _remove(cached):
                return None
    return None


def _copy_name(model_path: Path) -> str:
    """<which model file>-<which version of it, for which onnxruntime and CPU>.onnx.

    The copy suits this CPU and onnxruntime version only, and this very file: all of them are in its name.
    """
    stat = model_path.stat()
    key = (str(model_path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino,
           ort.__version__, cpu_flags())
    return f"{_digest(key[0], 12)}-{_digest(repr(key), 24)}.onnx"


def _write(model_path: Path, cached: Path) -> None:
    """Optimize the model in a throwaway session that saves the result as `cached`, then drop older copies.

    A new copy replaces the older ones of the same model file (a re-export, a new download), so the cache holds
    one model's worth per model folder, however often it is retrained.
    """
    folder = cached.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=folder, suffix=".part")  # a name of its own, even across containers
    os.close(fd)
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = 1  # it optimizes and is dropped; it never runs the model
        opts.optimized_model_filepath = partial
        opts.log_severity_level = 3  # not its warning that the result suits this machine only: it is keyed
        ort.InferenceSession(str(model_path), sess_options=opts, providers=PROVIDERS)
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, cached)  # whole or absent, even with two processes starting at once
    finally:
        Path(partial).unlink(missing_ok=True)
    same_file = cached.name.partition("-")[0]
    for stale in folder.glob(f"{same_file}-*.onnx"):  # a session already loaded from one has read it whole
        if stale != cached:
            stale.unlink(missing_ok=True)


def _remove(cached: Path) -> bool:
    try:
        cached.unlink(missing_ok=True)
        return True
    except OSError as exc:  # a cache folder made read-only since: leave the copy, optimize in memory
        log.warning("could not remove %s (%s); optimizing the model in memory", cached, exc)
        return False


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def cpu_flags() -> str:
    """What the CPU can do, from /proc/cpuinfo ("flags" on x86, "Features" on ARM), else the platform."""
    try:
        return next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
