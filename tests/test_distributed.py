"""Data-parallel training (ranem.distributed; ranem.train under a process group): two Gloo processes
on CPU train what one process trains with their global batch, only rank 0 writes the checkpoint and
a resumed two-process run continues exactly.

The comparison runs in float64: in float32 the first gradients agree to ~1e-5 of their size, but
Prodigy (Adam-like) normalises every gradient element, so rounding-level differences in near-zero
elements become weight differences of the step size within a few steps. The workers are forked
(after the single-process reference has warmed up torch, as DataLoader workers are): spawned ones
would import torch again, seconds each on a busy machine."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import ranem.train
from ranem import distributed
from ranem.nem import NEMt, RaNEM
from ranem.train import _as_loader, train

BATCH, WORLD, EPOCHS = 8, 2, 2  # one process: 8 images per step; two processes: 4 each
# NEMt with the 'zeros' substrate and no dropout draws nothing random: one process and two must agree.
DETERMINISTIC = dict(substrates=("zeros",), dropout=0.0)
OPTIONS = dict(samples=1, seed=3, d0=1e-3, progress=False)  # d0: weights move visibly in 6 steps


def _classifier():
    torch.manual_seed(0)
    nn = torch.nn
    clf = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    clf.ranem_info = {"image_size": 32}
    return clf.eval()


def _images():
    return torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _fresh(cls=NEMt, seed=0, **kwargs):
    """A NEM in float64 on its own copy of the classifier (built in float32: the encoder probes it so)."""
    classifier = _classifier()
    torch.manual_seed(seed)
    return cls(classifier, layers=["1", "3"], **kwargs).double()


class _Interrupt(Exception):
    pass


def _stop_after_1(epoch, history):
    if epoch == 1:
        raise _Interrupt


def _worker(rank, port, folder):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.init(cuda=False) == torch.device("cpu") and distributed.world() == (rank, WORLD)
    writes = []
    save = ranem.train._save_checkpoint
    ranem.train._save_checkpoint = lambda *args: (writes.append(args[8]), save(*args))
    images, ckpt = _images(), os.path.join(folder, "nemt.ckpt")
    with pytest.raises(_Interrupt):  # on every process, after rank 0 wrote epoch 1's checkpoint
        train(_fresh(**DETERMINISTIC), images, epochs=EPOCHS, batch_size=BATCH // WORLD, checkpoint=ckpt,
              callback=_stop_after_1, **OPTIONS)
    resumed = _fresh(seed=123, **DETERMINISTIC)  # other initial weights: all must come from the checkpoint
    history = train(resumed, images, epochs=EPOCHS, batch_size=BATCH // WORLD, checkpoint=ckpt, resume=True,
                    **OPTIONS)
    ranem_ = _fresh(cls=RaNEM)  # random draws per process: the replicas must still stay equal
    train(ranem_, images, epochs=1, batch_size=BATCH // WORLD, **{**OPTIONS, "samples": 2})
    torch.save({"nemt": resumed.decoder.state_dict(), "history": history, "writes": writes,
                "ranem": ranem_.decoder.state_dict()}, os.path.join(folder, f"rank{rank}.pt"))
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or "fork" not in mp.get_all_start_methods(),
                    reason="needs torch.distributed (Gloo) and forked processes")
def test_two_processes_train_what_one_process_trains_with_their_global_batch(tmp_path):
    start = dict(_fresh(**DETERMINISTIC).decoder.named_parameters())
    one = _fresh(**DETERMINISTIC)
    history = train(one, _images(), epochs=EPOCHS, batch_size=BATCH, **OPTIONS)

    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert ranks[0]["writes"] == [1, 2] and ranks[1]["writes"] == []  # epochs checkpointed, by rank 0 only
    for got in ranks:
        torch.testing.assert_close(got["nemt"], one.decoder.state_dict(), atol=1e-9, rtol=0)  # measured 3e-15
        torch.testing.assert_close(got["history"]["step_loss"], history["step_loss"], atol=1e-6, rtol=0)
        torch.testing.assert_close(got["ranem"], ranks[0]["ranem"], atol=0, rtol=0)
    trained = dict(one.decoder.named_parameters())
    moved = max((trained[k] - v).abs().max().item() for k, v in start.items())
    assert moved > 1e-3  # the comparison is not between barely trained weights


def test_shards_of_a_global_batch_are_the_single_process_batch():
    data = torch.arange(22.0)[:, None]
    one = _as_loader(data, 8, torch.Generator().manual_seed(1))
    shards = [_as_loader(data, 4, torch.Generator().manual_seed(1), rank, 2) for rank in range(2)]
    assert len(one) == len(shards[0]) == 2  # the ragged last batch dropped
    for _ in range(2):  # two epochs: the shuffle goes on as one process's does
        for (b,), (s0,), (s1,) in zip(one, *shards):
            assert torch.equal(b, torch.cat([s0, s1]))
    with pytest.raises(ValueError, match="global batch"):
        _as_loader(data, 12, torch.Generator(), 0, 2)
    with pytest.raises(TypeError, match="DistributedSampler"):
        _as_loader(torch.utils.data.DataLoader(data), 4, torch.Generator(), 0, 2)


def test_init_explains_a_missing_or_bad_torchrun_environment(monkeypatch):
    assert distributed.world() == (0, 1) and distributed.is_main_process()
    for name in distributed.ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.init()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    for rank, size, local, match in (("x", "2", "0", "integers"), ("2", "2", "0", "inconsistent"),
                                     ("0", "0", "0", "inconsistent")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", size)
        monkeypatch.setenv("LOCAL_RANK", local)
        with pytest.raises(RuntimeError, match=match):
            distributed.init()
    distributed.shutdown()  # nothing started: nothing to do
