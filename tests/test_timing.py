"""compare_times at a batch size above 1: which calls it times, what it returns, what it refuses."""
import pytest
import torch
from torch import nn

from ranem.metrics import compare_times


def _model():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()


def _recorder(name, calls, predicts_label=False):
    def fn(m, batch, target=None):
        calls.append((name, batch.shape[0], target))
        return batch.sum(1)
    fn.predicts_label = predicts_label
    return fn


def test_batched_calls_are_round_robin_over_whole_batches():
    model, x, calls = _model(), torch.randn(7, 3, 2, 2), []
    out = compare_times({"a": _recorder("a", calls), "b": _recorder("b", calls)}, model, x, rounds=2, warmup=1,
                        batch=3)
    # one warm-up call each on the first batch, then 2 rounds x 2 whole batches of 3 (the 7th image is
    # not timed), each batch explained by a, then b
    assert [(n, b) for n, b, _ in calls] == [("a", 3), ("b", 3)] + [("a", 3), ("b", 3)] * 4
    for _, _, target in calls:  # the label comes from the model's own forward on that batch
        assert target is not None and target.shape == (3,)
    assert set(out) == {"a", "b"} and all(v > 0 for v in out.values())


def test_batch_one_is_the_default_and_a_nem_gets_no_label():
    model, x, calls = _model(), torch.randn(2, 3, 2, 2), []
    compare_times({"nem": _recorder("nem", calls, predicts_label=True)}, model, x, rounds=1, warmup=0)
    assert [(b, t) for _, b, t in calls] == [(1, None), (1, None)]


def test_the_result_is_seconds_per_image_not_per_call():
    import time
    model, x = _model(), torch.randn(4, 3, 2, 2)

    def slow(m, batch, target=None):  # 20 ms per call, whatever the batch size
        time.sleep(0.02)
        return batch.sum(1)

    per_image = compare_times({"slow": slow}, model, x, rounds=2, warmup=0, batch=4)["slow"]
    assert 0.004 <= per_image < 0.02  # about 20 ms / 4 images, well below one call's 20 ms


@pytest.mark.parametrize("batch, error, match", [
    (0, ValueError, "batch must be an int >= 1"),
    (2.0, ValueError, "batch must be an int >= 1"),
    (5, ValueError, r"batch must be at most the number of images in x \(4\), got 5"),
])
def test_bad_batch_sizes_are_refused(batch, error, match):
    with pytest.raises(error, match=match):
        compare_times({"a": lambda m, b, t=None: b.sum(1)}, _model(), torch.randn(4, 3, 2, 2), batch=batch)
