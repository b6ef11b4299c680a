"""Data-parallel training over several GPUs or machines, with Hugging Face accelerate and fastai's `distrib_ctx`.

    accelerate launch --multi_gpu --num_processes 4 -m training train --data data/bears --out models/bears

The launcher starts one process per GPU; each runs the same `training.train.train`. Every process trains on
its share of each epoch's images (`--batch-size` is per process) and DDP averages the gradients. The main
process (global rank 0) alone runs the learning-rate finder and tells the others its suggestion, and alone
evaluates on the whole validation split and writes the model folder. In a single process (plain
`python -m training train`) every function here is a no-op.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

import torch
import torch.distributed as dist

from training.errors import StageError

log = logging.getLogger(__name__)


# torchrun and `accelerate launch` set WORLD_SIZE and RANK, which fastai reads. mpirun (`accelerate launch
# --cpu --mpirun_hostfile`) sets its own; accelerate copies them to WORLD_SIZE and RANK when the process joins.
SIZE_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")


def world_size() -> int:
    """How many processes train together: 1 unless started by `accelerate launch`, torchrun or mpirun."""
    return max(1, _first_int(SIZE_VARS, 1))


def is_main() -> bool:
    """Whether this is the process that logs, evaluates and writes (global rank 0)."""
    return _first_int(RANK_VARS, 0) == 0


def _first_int(names: tuple[str, ...], default: int) -> int:
    return next((int(os.environ[n]) for n in names if os.environ.get(n)), default)


def join() -> torch.device | None:
    """Join the launcher's process group; return this process's device (None when it trains alone)."""
    if world_size() == 1:
        _warn_if_launched_alone()
        return None
    try:
        from accelerate import PartialState
    except ImportError:
        raise StageError("training with several processes needs Hugging Face accelerate: "
                         "`pip install -r requirements-train.txt`") from None
    _use_cpu_friendly_broadcast()
    # On a machine without CUDA the processes meet over gloo; accelerate would otherwise not join them at all.
    device = PartialState(cpu=not torch.cuda.is_available()).device
    # accelerate says "cpu:0", which torch.load cannot map checkpoints to (lr_find reloads the weights with it).
    device = torch.device("cpu") if device.type == "cpu" else device
    log.info("data-parallel training: %d processes over %s; the main process trains on %s",
             world_size(), dist.get_backend(), device)
    return device


def exit_process(code: int) -> None:
    """End a process that trained with others with `code`, without shutting Python down; return if it did not.

    gloo's worker threads drop each collective's tensors a moment after the collective returns, and dropping
    the last reference to a tensor Python also knows takes the GIL. Once Python is shutting down, a thread that
    asks for the GIL is made to exit on the spot, from inside a C++ destructor, and the process aborts:
    "terminate called without an active exception", SIGABRT. A process other than the main one exits right
    after its last collective, so a worker thread that the scheduler holds back on a busy machine hits this
    (1 exit in 20 in a bare 2-process gloo script; 5 in 8 when those threads are made to run last); the
    launcher then kills the main process, mid-evaluation. destroy_process_group() would join the threads, but
    it does not end the group while anything holds it, and a DDP wrapper keeps it after the wrapper is gone.
    os._exit ends the process without that shutdown, once the logs and output are flushed.
    """
    if not dist.is_initialized():
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def data_parallel(learn):
    """fastai's distrib_ctx when several processes train together; a no-op for one."""
    if world_size() == 1:
        return contextlib.nullcontext(learn)
    # sync_bn=False: distrib_ctx would swap every BatchNorm for SyncBatchNorm and leave them in the learner,
    # so export.pkl and model.onnx would differ from a single-process model. Plain DDP BatchNorm (statistics
    # per process, buffers from rank 0) is what torchvision's reference training does too.
    return learn.distrib_ctx(sync_bn=False, cpu=not torch.cuda.is_available())


@contextlib.contextmanager
def alone():
    """Let the main process run fastai by itself (lr_find, get_preds) while the others are not listening."""
    # fastai gathers every loss and prediction across processes whenever WORLD_SIZE > 1, even outside
    # distrib_ctx; with the others not taking part, that gather would wait forever.
    saved = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["WORLD_SIZE"]
        else:
            os.environ["WORLD_SIZE"] = saved


def on_main(fn):
    """fn() run by the main process alone; every process gets its result."""
    if world_size() == 1:
        return fn()
    result = [None]
    if is_main():
        with alone():
            result = [fn()]
    dist.broadcast_object_list(result, src=0)
    return result[0]


def _warn_if_launched_alone() -> None:
    # `accelerate launch --cpu --num_processes N` without --mpirun_hostfile sets MASTER_ADDR for N processes
    # but starts only this one, and says nothing about it.
    if "MASTER_ADDR" in os.environ and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
        log.warning("accelerate started a single process: `accelerate launch --cpu` needs --mpirun_hostfile to start "
                    "more; on a machine without GPUs use `accelerate launch --multi_gpu --num_processes N` or "
                    "`torchrun --nproc_per_node N -m training train ...`, which train together over gloo")


def _use_cpu_friendly_broadcast() -> None:
    """Make fastai's DistributedDL send its batch order over gloo as a CPU tensor."""
    from fastai.distributed import DistributedDL

    fastai_broadcast = getattr(DistributedDL._broadcast, "fastai_broadcast", DistributedDL._broadcast)

    def _broadcast(self, t, rank):
        # fastai 2.8 moves the indices to CUDA because NCCL carries only CUDA tensors, which fails on a
        # machine without a GPU. A group that has gloo (CPU-only, or accelerate's "cuda:nccl,cpu:gloo")
        # carries CPU tensors, so keep them there; an NCCL-only group keeps fastai's own code.
        if "gloo" not in str(dist.get_backend()):
            return fastai_broadcast(self, t, rank)
        t = torch.tensor(t, dtype=torch.long)
        dist.broadcast(t, rank)
        return t.tolist()

    _broadcast.fastai_broadcast = fastai_broadcast
    DistributedDL._broadcast = _broadcast
