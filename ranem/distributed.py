"""The process group of multi-process (data-parallel) training: started from torchrun's environment.

``init()`` reads the variables ``torchrun`` gives every process (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), starts the default process group (NCCL on CUDA, Gloo on CPU) and returns
this process's device; ``world()`` and ``is_main_process()`` say who we are (rank 0 of 1 without a
process group); ``shutdown()`` ends the group. Once a group of two or more processes is started,
``ranem.train.train`` trains data-parallel by itself: its docstring says what changes (the batch size
is per process). ``synced_batchnorm`` is the one collective training needs beyond DDP's gradient
averaging: BatchNorm statistics over the global batch, on CPU (Gloo) as on CUDA.

Running on several GPUs
-----------------------
A script ``train_nem.py``::

    import ranem, ranem.distributed as dist

    device = dist.init()  # cuda:LOCAL_RANK (or cpu), process group started
    nem = ranem.RaNEM(classifier).to(device)  # the same classifier in every process
    nem.fit(images, epochs=10, batch_size=32, device=device,  # 32 images per process and step
            checkpoint="nem.ckpt", resume=True, progress=dist.is_main_process())
    if dist.is_main_process():
        nem.save("nem.safetensors")
    dist.shutdown()

started with ``torchrun --nproc_per_node 8 train_nem.py`` (or ``python -m torch.distributed.run
--nproc_per_node 8 train_nem.py``); on a CPU machine the same command trains with Gloo.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import os

import torch
import torch.distributed as dist

__all__ = ["init", "world", "is_main_process", "shutdown", "barrier", "synced_batchnorm", "mean_over_processes",
           "check_same"]
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables, checked."""
    missing = [name for name in ENV if name not in os.environ]
    if missing:
        raise RuntimeError(f"environment variables {missing} are not set: start the processes with torchrun "
                           "(torchrun --nproc_per_node N script.py), which sets RANK, WORLD_SIZE, LOCAL_RANK, "
                           "MASTER_ADDR and MASTER_PORT")
    try:
        rank, size, local = (int(os.environ[name]) for name in ENV[:3])
    except ValueError as err:
        raise RuntimeError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {err}") from err
    if size < 1 or not 0 <= rank < size or local < 0:
        raise RuntimeError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local} "
                           "(need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0)")
    return rank, size, local


def init(cuda: bool | None = None, backend: str | None = None, timeout_s: float = 1800) -> torch.device:
    """Start the default process group from torchrun's environment and return this process's device:
    ``cuda:LOCAL_RANK`` (made the current CUDA device) or ``cpu``.

    cuda: None uses CUDA when available; False trains on CPU. backend: None picks NCCL on CUDA and
    Gloo on CPU. Calling it again in a started group only returns the device. RuntimeError naming
    the variables to set when the process was not started by torchrun."""
    rank, size, local = _env()
    cuda = torch.cuda.is_available() if cuda is None else bool(cuda)
    if cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA devices: "
                               "start at most that many processes per node")
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return device


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) without a started process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (or the only one): the one that writes files and prints."""
    return world()[0] == 0


def shutdown() -> None:
    """End the process group started by ``init`` (nothing to do without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (e.g. until rank 0 has written a file the others read)."""
    dist.barrier()


# ----------------------------------------------------------------------------- BatchNorm over the global batch
class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose backward sums the gradients over the processes: what each process's
    input contributed to every process's loss. (torch.distributed.nn's is deprecated, its successor
    in torch.distributed._functional_collectives private and differentiable only in recent torch.)"""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return _SumOverProcesses.apply(grad.contiguous())


def _synced_forward(bn: torch.nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn``'s training forward with mean and variance over every process's batch (differentiable
    all-reduces: the backward sums the statistics' gradients over the processes, as for one batch)."""
    if not bn.training:  # running statistics: nothing to share
        return type(bn).forward(bn, x)
    dims, shape = [d for d in range(x.ndim) if d != 1], [1, -1] + [1] * (x.ndim - 2)
    count = torch.full((1,), x.numel() / x.shape[1], dtype=torch.float64, device=x.device)
    total = _SumOverProcesses.apply(torch.cat([x.sum(dims, dtype=torch.float64), count]))
    n, work = total[-1].detach(), torch.promote_types(x.dtype, torch.float32)  # float16/bfloat16: in float32
    mean = (total[:-1] / n).to(work)
    centred = x.to(work) - mean.view(shape)
    var = (_SumOverProcesses.apply(centred.square().sum(dims, dtype=torch.float64)) / n).to(work)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked += 1
            momentum = bn.momentum if bn.momentum is not None else 1 / bn.num_batches_tracked.item()
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_((var * (n / (n - 1))).to(bn.running_var.dtype), momentum)  # unbiased
    y = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y.to(x.dtype)


@contextlib.contextmanager
def synced_batchnorm(module: torch.nn.Module):
    """Within the block, every BatchNorm layer of ``module`` normalises training batches with the
    statistics of the global batch (all processes of the group) and updates its running statistics
    with them, so that N processes with b images each compute what one process with N*b images
    would. Parameters and buffers stay the layers' own (no module is replaced, the state dict is
    unchanged). Needed because ``torch.nn.SyncBatchNorm`` refuses CPU tensors (Gloo); on CUDA it
    costs two small all-reduces per layer and step, one more each in the backward."""
    layers = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in layers:
        bn.forward = functools.partial(_synced_forward, bn)
    try:
        yield module
    finally:
        for bn in layers:
            del bn.forward


# ----------------------------------------------------------------------------- small collectives
def mean_over_processes(values, device) -> list[float]:
    """The mean of each number over the processes (for what a log records: the loss of the global batch)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def check_same(value: int, what: str, device) -> None:
    """RuntimeError unless every process holds the same integer ``value`` (e.g. the epoch it resumes
    from: a checkpoint that only some processes can read would otherwise hang the group)."""
    t = torch.tensor([value, -value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if t[0] != -t[1]:
        raise RuntimeError(f"the processes disagree on {what} (from {-int(t[1])} to {int(t[0])}, this process "
                           f"{value}): every process must see the same files (a shared checkpoint path)")
