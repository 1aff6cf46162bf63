"""One training loop for every NEM (Ra-NEM, NEMt, the token NEMs), with resumable checkpoints.

``train(nem, data, ...)``: the NEM defines its loss on a batch (``nem.loss``); this loop adds
Prodigy (lr 1, weight decay 1e-4) on the decoder only, cosine annealing stepped per epoch, mixed
precision and channels-last on CUDA, a progress bar, a history (loss per step and epoch, validation
faithfulness per epoch, attributions of a few fixed images after each epoch), an atomic checkpoint
after every epoch and ``resume=True`` continuing exactly where it stopped (same seed, same result
on CPU). Under a process group of several processes (torchrun, ``ranem.distributed``) the same
call trains data-parallel (see ``train``). ``plateau_epoch`` reads where a learning curve stops
rising. The NEMs the book's chapters share are trained and cached by ``ranem.zoo.get_nem``.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from prodigyopt import Prodigy
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, TensorDataset
from tqdm.auto import tqdm

from ranem import _checks, config, distributed
from ranem.ops import SUBSTRATE_MODES
from ranem.cache import CacheError, atomic_write, classifier_fingerprint, content_sha256, read_safetensors

if TYPE_CHECKING:  # for annotations only: ranem.nem imports this module (BaseNEM.fit), never the reverse
    from ranem.nem import BaseNEM

__all__ = ["train", "plateau_epoch", "CKPT_FORMAT"]
CKPT_FORMAT = "ranem-train/1"


# ----------------------------------------------------------------------------- data
class _ShardBatches(Sampler):
    """This process's part of every global batch. Global batches of ``world_size * batch_size``
    indices are cut from ``order`` (the single-process loader's shuffle: same generator, same draws)
    and process r takes their r-th block of ``batch_size``: the processes' batches together are the
    single-process batch, every epoch. A ragged last global batch is dropped."""

    def __init__(self, order: Sampler, batch_size: int, rank: int, world_size: int):
        self.order, self.batch_size = order, batch_size
        self.start, self.size = rank * batch_size, batch_size * world_size

    def __len__(self) -> int:
        return len(self.order) // self.size

    def __iter__(self):
        order = list(self.order)
        for i in range(0, len(order) - self.size + 1, self.size):
            yield order[i + self.start:i + self.start + self.batch_size]


def _as_loader(data, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> DataLoader:
    if isinstance(data, DataLoader):
        if world_size > 1 and not isinstance(data.sampler, DistributedSampler):
            raise TypeError("distributed training shards a Dataset or a tensor itself; a DataLoader must use a "
                            "DistributedSampler")
        return data
    if isinstance(data, torch.Tensor):
        data = TensorDataset(data)
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a Dataset, a DataLoader or a tensor of images, got {type(data).__name__}")
    n = len(data)
    if n < 1:
        raise ValueError("data is empty")
    if world_size > 1:
        if n < world_size * batch_size:
            raise ValueError(f"data has {n} items, fewer than one global batch ({world_size} processes x "
                             f"batch_size {batch_size})")
        order = RandomSampler(data, generator=generator)
        return DataLoader(data, batch_sampler=_ShardBatches(order, batch_size, rank, world_size), generator=generator)
    # Drop a ragged last batch (BatchNorm in the decoder dislikes tiny batches) unless it is all we have.
    return DataLoader(data, batch_size=min(batch_size, n), shuffle=True, generator=generator, drop_last=n > batch_size)


def _images(batch, nem: BaseNEM, device) -> torch.Tensor:
    """The inputs of a batch (first item of a tuple), checked and on ``device`` by the NEM's
    ``prepare``: images normalised (uint8 scaled with the classifier's mean/std), token ids as they are."""
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    return nem.prepare(x, device)  # checks (finite images included) and normalisation


def _stack(data, nem: BaseNEM, device) -> torch.Tensor | None:
    if data is None:
        return None
    if isinstance(data, (Dataset, DataLoader)):
        loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=256)
        return torch.cat([_images(b, nem, device) for b in loader])
    return _images(data, nem, device)


# ----------------------------------------------------------------------------- state <-> safetensors
def _encode(obj, prefix: str, tensors: dict):
    """Nested state (dicts with int keys, tuples, tensors) -> JSON-able tree + flat tensor dict."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"$t": prefix}
    if isinstance(obj, dict):
        return {"$d": [[k, _encode(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if hasattr(obj, "item") and not isinstance(obj, (bool, int, float, str)):
        return obj.item()  # numpy scalars
    return obj


def _decode(obj, tensors: dict):
    if isinstance(obj, dict):
        return tensors[obj["$t"]] if "$t" in obj else {k: _decode(v, tensors) for k, v in obj["$d"]}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def _write_atomic(path: Path, tensors: dict, meta: dict) -> None:
    meta = {**meta, "sha256": content_sha256(tensors, meta)}  # resume refuses a changed file
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"ranem": json.dumps(meta)}))


def _rng_state(generator, device) -> dict:
    state = {"global": torch.get_rng_state(), "generator": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, generator, device) -> None:
    torch.set_rng_state(state["global"])
    generator.set_state(state["generator"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _save_checkpoint(path, nem, opt, sched, scaler, generator, shuffle, device, epoch, history, run):
    tensors: dict = {}
    state = {"decoder": nem.decoder.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "scaler": scaler.state_dict(), "rng": _rng_state(generator, device), "shuffle": shuffle.get_state(),
             "history": history}
    meta = {"format": CKPT_FORMAT, "epoch": epoch, "kind": nem.kind, "config": nem.config, "run": run,
            "fingerprint": classifier_fingerprint(nem.classifier), "state": _encode(state, "s", tensors)}
    _write_atomic(Path(path), tensors, meta)


def _load_checkpoint(path, nem, run) -> tuple[int, dict]:
    tensors, header = read_safetensors(path, "resume is not possible")
    try:
        meta = json.loads(header.get("ranem", "{}"))
    except json.JSONDecodeError as err:
        raise CacheError(f"checkpoint {path} has an unreadable header ({err})") from err
    digest = meta.pop("sha256", None)
    if digest is not None and content_sha256(tensors, meta) != digest:
        raise CacheError(f"checkpoint {path} does not match the SHA-256 recorded when it was written")
    if meta.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path} is not a ranem training checkpoint")
    theirs = {k: v for k, v in meta["run"].items() if k != "epochs"}
    mine = {k: v for k, v in run.items() if k != "epochs"}
    if meta["kind"] != nem.kind or meta["config"] != nem.config or theirs != mine:
        raise ValueError(f"checkpoint {path} belongs to another run ({meta['kind']}, {meta['run']}); "
                         "resume needs the same NEM and training options, or delete the checkpoint")
    if meta["fingerprint"] != classifier_fingerprint(nem.classifier):
        raise ValueError(f"checkpoint {path} was trained for another classifier ({meta['fingerprint']['name']})")
    return meta["epoch"], _decode(meta["state"], tensors)


def _resume_point(checkpoint, nem, run) -> tuple[int, dict | None]:
    """(epoch, state) to resume from, or (0, None) to start afresh: without a checkpoint, or with
    one that is truncated or corrupted (a checkpoint only saves time; warn and train from the start)."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return 0, None
    try:
        return _load_checkpoint(checkpoint, nem, run)
    except CacheError as err:
        warnings.warn(f"{err}: training starts again from epoch 0", stacklevel=3)
        return 0, None


# ----------------------------------------------------------------------------- the loop
def _seed_epoch(generator: torch.Generator, seed: int, epoch: int, rank: int) -> None:
    """Data-parallel runs: this process's random draws (``generator``: k, Gumbel noise, substrates;
    the global RNG: dropout) in ``epoch`` are a function of (seed, epoch, rank), so that the processes
    draw independently and a resumed run draws what the uninterrupted one did without every
    process's RNG state in rank 0's checkpoint."""
    key = hashlib.blake2b(f"ranem-train/{seed}/{epoch}/{rank}".encode(), digest_size=8).digest()
    s = int.from_bytes(key, "little") >> 1
    generator.manual_seed(s)
    torch.manual_seed(s)


@contextlib.contextmanager
def _replicated(nem, ddp: DistributedDataParallel | None):
    """One step's loss computed through the DDP replica of the decoder (its backward averages the
    gradients over the processes) with BatchNorm statistics of the global batch. Without ``ddp``
    (one process) nothing changes."""
    if ddp is None:
        yield
        return
    plain = nem.decoder
    nem.decoder = ddp
    try:
        with distributed.synced_batchnorm(plain):
            yield
    finally:
        nem.decoder = plain


def _validate(nem: BaseNEM, x: torch.Tensor, steps: int, amp: bool) -> float:
    return nem.validation_faithfulness(x, steps, amp)


# What the loop uses of a NEM (ranem.nem.BaseNEM's interface). Checked by name rather than by
# class, so that this module need not import ranem.nem.
NEM_INTERFACE = ("decoder", "kind", "config", "default_samples", "channels_last", "loss", "prepare",
                 "explain", "validation_faithfulness")


def _check_nem(nem) -> None:
    if not isinstance(nem, torch.nn.Module) or not all(hasattr(nem, name) for name in NEM_INTERFACE):
        raise TypeError(f"nem must be a RaNEM or NEMt (or a token NEM of ranem.tokens), got {type(nem).__name__}")


def train(nem: BaseNEM, data, *, epochs: int | None = None, samples: int | None = None, batch_size: int = 32,
          val_data=None, snapshot=None, substrate_mode: str = "input", lr: float = 1.0,
          weight_decay: float = 1e-4, d0: float = 1e-6, t_max: int | None = None, eta_min: float = 1e-6, seed: int = 0,
          checkpoint=None, resume: bool = False, device=None, amp: bool | None = None,
          curve_steps: int = 16, progress: bool = True, callback=None) -> dict:
    """Train ``nem``'s decoder in place and return its history (also kept as ``nem.history``).

    data: Dataset / DataLoader / tensor of images or (image, ...) tuples; uint8 images are
    normalised with the classifier's mean/std, float images are taken as already normalised.
    epochs: default ``config.settings().nem_epochs``; samples: masked copies per image (Ra-NEM 6,
    NEMt 1 by default), all pushed through the classifier as one batch. val_data: images whose mean
    faithfulness (``curve_steps`` steps) is recorded before training and after each epoch;
    snapshot: images whose attributions are recorded at the same times (``history['snapshots']``,
    (epochs+1, n, H, W)). substrate_mode: 'input' (a substrate drawn per masked input) or 'batch'.
    d0: Prodigy's initial step-size estimate (its default 1e-6; Prodigy grows it geometrically, which
    takes a few dozen steps: a short training run profits from a larger start).
    t_max: cosine period in epochs (default 2*epochs: the authors' 20 for 10 epochs).
    checkpoint: a file written atomically after every epoch; ``resume=True`` continues from it.
    callback(epoch, history) runs after each epoch's checkpoint.

    Data-parallel: when a process group of N > 1 processes is started (``ranem.distributed.init``
    under torchrun), every process calls ``train`` with the same arguments and data and the decoder
    is trained as DistributedDataParallel. ``batch_size`` is per process: a step sees N *
    batch_size images, the single-process loader's batch of that size cut into N blocks (same
    shuffle, every epoch), and since the loss is a mean over equal blocks, DDP's averaged gradient
    is the full batch's. BatchNorm in the decoder uses the global batch's statistics
    (``ranem.distributed.synced_batchnorm``). A run without randomness (e.g. NEMt with the 'zeros'
    substrate, dropout 0) thus equals one process with batch N * batch_size, to float rounding. The
    random draws (k, Gumbel noise, substrates, dropout) are each process's own stream, a function
    of (seed, epoch, rank): as good a sample, but not the same numbers as one process. Only rank 0
    writes the checkpoint; every process resumes from it (a shared path) and returns the same
    history (losses averaged over the processes); ``callback`` runs on every process.
    """
    _check_nem(nem)
    epochs = config.settings().nem_epochs if epochs is None else epochs
    samples = nem.default_samples if samples is None else samples
    for name, value in (("epochs", epochs), ("samples", samples), ("batch_size", batch_size),
                        ("curve_steps", curve_steps)):
        _checks.integer(value, name)
    _checks.one_of(substrate_mode, "substrate_mode", SUBSTRATE_MODES)
    device = torch.device(device) if device is not None else next(nem.decoder.parameters()).device
    rank, world_size = distributed.world()
    parallel = world_size > 1
    cuda = device.type == "cuda"
    amp = cuda if amp is None else bool(amp) and cuda
    amp_dtype = torch.float16 if cuda and not torch.cuda.is_bf16_supported() else torch.bfloat16
    nem.to(device)
    channels_last = cuda and nem.channels_last  # images only: token ids have no channels
    if channels_last:  # channels-last pays on GPUs; on CPU it was measured slower for this decoder
        nem.to(memory_format=torch.channels_last)
    run = {"epochs": epochs, "samples": samples, "batch_size": batch_size, "substrate_mode": substrate_mode,
           "lr": lr, "weight_decay": weight_decay, "d0": d0, "t_max": t_max or 2 * epochs, "eta_min": eta_min,
           "seed": seed}
    if parallel:  # another world size is another run (another global batch)
        run["world_size"] = world_size

    generator = torch.Generator().manual_seed(seed)  # k, Gumbel noise, substrates (CPU: same on every device)
    shuffle = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed)  # dropout
    loader = _as_loader(data, batch_size, shuffle, rank, world_size)
    x_val, x_snap = _stack(val_data, nem, device), _stack(snapshot, nem, device)
    with contextlib.redirect_stdout(io.StringIO()):  # prodigyopt prints a notice
        opt = Prodigy(nem.decoder.parameters(), lr=lr, weight_decay=weight_decay, d0=d0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=run["t_max"], eta_min=eta_min)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    history = {"step_loss": [], "epoch_loss": [], "val_faithfulness": [], "lr": [], "epoch_seconds": [],
               "p_masked": [], "samples": samples}
    start, state = _resume_point(checkpoint, nem, run) if resume else (0, None)
    if state is not None:
        nem.decoder.load_state_dict(state["decoder"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], generator, device)
        shuffle.set_state(state["shuffle"])
        history = state["history"]
    elif x_val is not None or x_snap is not None:
        _record(nem, history, x_val, x_snap, curve_steps, amp)
    ddp = None
    if parallel:
        distributed.check_same(start, "the epoch to resume from", device)
        ddp = DistributedDataParallel(nem.decoder, device_ids=[device.index] if cuda else None)
    progress = progress and rank == 0

    bar = tqdm(total=(epochs - start) * len(loader), desc=f"train {nem.kind}", disable=not progress, leave=False)
    for epoch in range(start, epochs):
        nem.train()
        if parallel:
            _seed_epoch(generator, seed, epoch, rank)
            if isinstance(getattr(loader, "sampler", None), DistributedSampler):
                loader.sampler.set_epoch(epoch)
        t0, losses, p_masked = time.perf_counter(), [], []
        for batch in loader:
            x = _images(batch, nem, device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp), _replicated(nem, ddp):
                loss, stats = nem.loss(x, generator=generator, samples=samples, substrate_mode=substrate_mode)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            logged = (loss.item(), stats["p_masked"])
            if parallel:  # the global batch's
                logged = distributed.mean_over_processes(logged, device)
            losses.append(logged[0])
            p_masked.append(logged[1])
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
        history["lr"].append(sched.get_last_lr()[0] * opt.param_groups[0]["d"])  # Prodigy's effective step
        sched.step()
        history["step_loss"] += losses
        history["epoch_loss"].append(sum(losses) / len(losses))
        history["p_masked"].append(sum(p_masked) / len(p_masked))
        history["epoch_seconds"].append(time.perf_counter() - t0)
        _record(nem, history, x_val, x_snap, curve_steps, amp)
        if progress:
            val = f", val faithfulness {history['val_faithfulness'][-1]:.3f}" if x_val is not None else ""
            bar.write(f"epoch {epoch + 1}/{epochs}: loss {history['epoch_loss'][-1]:.4f}{val}")
        if checkpoint is not None and rank == 0:
            Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
            _save_checkpoint(checkpoint, nem, opt, sched, scaler, generator, shuffle, device, epoch + 1, history, run)
        if checkpoint is not None and parallel:
            distributed.barrier()  # written before any process reads it (a callback, a resume)
        if callback is not None:
            callback(epoch + 1, history)
    bar.close()
    nem.eval()
    if channels_last:
        nem.to(memory_format=torch.contiguous_format)
    nem.history = history
    return history


def _record(nem, history, x_val, x_snap, steps, amp) -> None:
    if x_val is not None:
        history["val_faithfulness"].append(_validate(nem, x_val, steps, amp))
    if x_snap is not None:
        a = nem.explain(x_snap).float().cpu()[None]
        old = history.get("snapshots")
        history["snapshots"] = a if old is None else torch.cat([old, a])


def plateau_epoch(values, tolerance: float = 0.01) -> int:
    """The first epoch after which a learning curve never rises more than ``tolerance`` above its
    value there (``values[0]`` = before training). The last epoch means: still rising at the end."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("values is empty: pass the per-epoch validation scores (history['val_faithfulness'])")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    return next(e for e, v in enumerate(values) if all(later <= v + tolerance for later in values[e + 1:]))


# ----------------------------------------------------------------------------- old import paths
# The book's cache of NEMs moved to ranem.zoo; this keeps ``from ranem.train import get_nem`` and
# the like working. Resolved on first use, so this module does not import ranem.zoo (no cycle).
_MOVED_TO_ZOO = {"get_nem", "nem_spec", "NEM_CACHE_VERSION", "NEM_SYNTHETIC_SEED"}


def __getattr__(name: str):
    if name in _MOVED_TO_ZOO:
        return getattr(importlib.import_module("ranem.zoo"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
