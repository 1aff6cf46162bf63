"""The cases of issue 14, one by one: bad input gets a TypeError/ValueError naming the argument,
never a silent wrong answer or a crash deep inside torch; low-precision images follow the dtype
rule (cast to the model's parameter dtype on entry). tests/test_fuzz.py searches more widely."""
import math

import pytest
import torch
from torch import nn

from ranem import baselines, metrics, ops
from ranem.baselines._common import check_maps, model_input
from ranem.data.transforms import normalize

torch.set_num_threads(1)


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_cnn()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def attribution():
    return torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(1))


def with_nan(t):
    t = t.clone()
    t.view(-1)[3] = math.nan
    return t


def nan_explainer(model, x, target=None):
    return torch.full((x.shape[0],) + x.shape[2:], math.nan)


# ----------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("metric", ["faithfulness", "insertion_curve", "deletion_curve", "mc_auc"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_curves_refuse_non_finite_images(model, x, attribution, metric, bad):
    xb = x.clone()
    xb[1, 2, 3, 4] = bad
    args = (2,) if metric == "mc_auc" else ()
    with pytest.raises(ValueError, match="x must be finite"):
        getattr(metrics, metric)(model, xb, attribution, *args, steps=4)


def test_curves_refuse_a_model_with_non_finite_logits(x, attribution):
    with pytest.raises(ValueError, match="NaN or inf logits"):
        metrics.insertion_curve(lambda t: torch.full((t.shape[0], 3), math.nan), x, attribution, steps=2)


def test_avg_sensitivity_refuses_nan_maps_instead_of_scoring_them_robust(model, x):
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.avg_sensitivity(nan_explainer, model, x, samples=2)
    with pytest.raises(ValueError, match="maps must be finite"):
        metrics.normalise_maps(with_nan(torch.rand(2, 16)))


def test_mprt_checks_the_shape_of_the_explainers_maps(model, x):
    with pytest.raises(ValueError, match=r"shape \(B, H, W\) = \(2, 8, 8\)"):
        metrics.mprt(lambda m, xx, t=None: torch.zeros(3, 8, 8), model, x)
    with pytest.raises(ValueError, match="shape"):
        metrics.mprt(lambda m, xx, t=None: torch.zeros(2, 64), model, x)


@pytest.mark.parametrize("layers", [0, -1, 1.5, True])
def test_randomised_copy_refuses_layer_counts_that_randomise_nothing(model, layers):
    with pytest.raises(ValueError, match="layers"):
        metrics.randomised_copy(model, layers=layers)
    with pytest.raises(ValueError, match="reset_parameters"):
        metrics.randomised_copy(nn.ReLU())


@pytest.mark.parametrize("k", [-1, 10**6, 2.7, math.nan, torch.tensor([1.0, 2.0]), torch.tensor([3, 65])])
def test_masked_images_refuses_bad_k(x, attribution, k):
    with pytest.raises(ValueError, match="k must|every k"):
        metrics.masked_images(x, attribution, k)


def test_masked_images_takes_every_count_from_0_to_d(x, attribution):
    for k in (0, 64, torch.tensor([0, 64])):
        assert metrics.masked_images(x, attribution, k).shape == x.shape


def test_auc_refuses_nan_curves():
    with pytest.raises(ValueError, match="finite"):
        metrics.auc(torch.tensor([[0.1, math.nan, 0.3]]))
    with pytest.raises(ValueError, match="finite"):
        metrics.mc_estimate(torch.tensor([[0.1, math.nan, 0.3]]), 1)


def test_normalize_refuses_nan():
    with pytest.raises(ValueError, match="finite"):
        normalize(torch.full((3, 4, 4), math.nan))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        normalize(torch.full((3, 4, 4), 2.0))


# ----------------------------------------------------------------------------- ops
def test_omega_refuses_a_substrate_of_another_batch_size(x, attribution):
    with pytest.raises(ValueError, match="substrate tensor must be shaped like x"):
        ops.omega(x, attribution, 3, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="substrate's output must be shaped like x"):
        ops.omega(x, attribution, 3, lambda t, g: torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="substrate tensor must be finite"):
        ops.omega(x, attribution, 3, torch.full_like(x, math.nan))


def test_omega_refuses_an_empty_batch_and_nan_images(x, attribution):
    with pytest.raises(ValueError, match="empty batch"):
        ops.omega(x[:0], attribution[:0], 3, "zeros")
    with pytest.raises(ValueError, match="x must be finite"):
        ops.omega(with_nan(x), attribution, 3, "zeros")


@pytest.mark.parametrize("noise", [True, False])
@pytest.mark.parametrize("k", [1, 20, 32, 33, 63])
def test_omega_mask_is_exact_k_and_finite_when_logits_span_more_than_float32(k, noise):
    x = torch.randn(2, 3, 8, 8)
    s = torch.tensor([-3e38, 3e38]).repeat(32)[torch.randperm(64)].view(1, 8, 8).repeat(2, 1, 1).requires_grad_(True)
    _, mask = ops.omega(x, s, k, "zeros", generator=torch.Generator().manual_seed(0), noise=noise)
    assert torch.isfinite(mask).all() and mask.sum((1, 2)).tolist() == [k, k]
    mask.mul(torch.randn_like(mask)).sum().backward()
    assert torch.isfinite(s.grad).all()


def test_omega_floor_changes_nothing_for_ordinary_scores():
    # The floor is an identity above it: same values and gradients as the formula without it.
    g = torch.Generator().manual_seed(3)
    x, s = torch.randn(2, 3, 5, 5, generator=g), torch.randn(2, 25, generator=g, dtype=torch.float64)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    _, m1 = ops.omega(x.double(), s1, 7, "zeros", noise=False)
    work = s2 - torch.logsumexp(s2, dim=1, keepdim=True)
    hard = torch.zeros_like(work).scatter_(1, work.detach().topk(7, dim=1).indices, 1.0)
    soft = torch.sigmoid(work - work.topk(7, dim=1).values[:, -1:])
    m2 = hard + (soft - soft.detach())
    w = torch.randn(2, 25, generator=g, dtype=torch.float64)
    (m1.flatten(1) * w).sum().backward()
    (m2 * w).sum().backward()
    assert torch.equal(m1.flatten(1), m2) and torch.equal(s1.grad, s2.grad)


@pytest.mark.parametrize("device", ["foo", "cuda:99", "tpu"])
def test_device_arguments_are_checked(device):
    for f in (lambda: ops.gumbel((2,), device=device), lambda: ops.sample_k(10, 2, device=device),
              lambda: baselines.rise_masks(2, 8, device=device), lambda: metrics.sample_points(10, 2, device=device),
              lambda: ops.gaussian_kernel(3, 1.0, device=device)):
        with pytest.raises(ValueError, match="device"):
            f()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="0 usable CUDA device"):
        ops.gumbel((2,), device="cuda")


def test_images_on_another_device_than_the_model_are_refused(x):
    on_meta = tiny_cnn().to("meta")
    with pytest.raises(ValueError, match="model's parameters are on meta"):
        model_input(on_meta, x)


# ----------------------------------------------------------------------------- explainers
@pytest.mark.parametrize("name,options,argument", [
    ("rise", dict(masks=8, baseline=math.nan), "baseline"),
    ("iba", dict(steps=1, draws=1, initial_alpha=math.nan), "initial_alpha"),
    ("iba", dict(steps=1, draws=1, beta=math.inf), "beta"),
    ("iba", dict(steps=1, draws=1, lr=math.nan), "lr"),
    ("gradient_shap", dict(stdev=math.inf), "stdev"),
    ("smooth_pixel_mask", dict(iterations=2, weight_end=math.inf), "weight_end"),
    ("smooth_pixel_mask", dict(iterations=2, sigma=math.nan), "sigma"),
])
def test_explainers_refuse_non_finite_options(model, x, name, options, argument):
    with pytest.raises(ValueError, match=f"{argument} must be a finite number"):
        baselines.explain(name, model, x, **options)


class Overflowing(nn.Module):
    """A model whose logits are inf: every gradient and probability derived from them is NaN."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 2, 3, padding=1)
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3))) * math.inf


@pytest.mark.parametrize("name,options", [
    ("saliency", {}), ("integrated_gradients", dict(steps=2)), ("gradient_shap", dict(samples=2)),
    ("grad_cam_pp", dict(layer="features")), ("rise", dict(masks=4)), ("smooth_pixel_mask", dict(iterations=2)),
    ("iba", dict(steps=1, draws=1)),
])
def test_explainers_raise_instead_of_returning_nan_maps(x, name, options):
    with pytest.raises(ValueError, match="NaN or inf"):
        baselines.explain(name, Overflowing().eval(), x, target=0, **options)


def test_check_maps_names_the_method(x):
    with pytest.raises(ValueError, match="my method produced NaN"):
        check_maps(torch.full((2, 8, 8), math.nan), x, "my method")


# ----------------------------------------------------------------------------- the dtype rule
EXPLAINERS = [("saliency", {}), ("integrated_gradients", dict(steps=3)), ("gradient_shap", dict(samples=2)),
              ("grad_cam_pp", dict(layer="2")), ("rise", dict(masks=8)), ("smooth_pixel_mask", dict(iterations=2)),
              ("iba", dict(steps=1, draws=2))]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name,options", EXPLAINERS)
def test_explainers_cast_images_to_the_models_dtype(model, x, dtype, name, options):
    low = x.to(dtype)
    got = baselines.explain(name, model, low, **options)
    assert got.dtype == torch.float32  # the model's dtype
    torch.testing.assert_close(got, baselines.explain(name, model, low.float(), **options))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_metrics_cast_images_to_the_models_dtype(model, x, attribution, dtype):
    low = x.to(dtype)
    torch.testing.assert_close(metrics.faithfulness(model, low, attribution, steps=4),
                               metrics.faithfulness(model, low.float(), attribution, steps=4))
    torch.testing.assert_close(metrics.mc_auc(model, low, attribution, 2, steps=4, generator=torch.Generator().manual_seed(0)),
                               metrics.mc_auc(model, low.float(), attribution, 2, steps=4,
                                              generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(metrics.avg_sensitivity(baselines.saliency, model, low, samples=2),
                               metrics.avg_sensitivity(baselines.saliency, model, low.float(), samples=2))
    torch.testing.assert_close(metrics.mprt(baselines.saliency, model, low),
                               metrics.mprt(baselines.saliency, model, low.float()))


def test_a_double_model_gets_double_images(x):
    model = tiny_cnn().double()
    assert model_input(model, x).dtype == torch.float64
    assert baselines.saliency(model, x).dtype == torch.float64


@pytest.fixture(scope="module")
def trained_nem():
    import timm

    from ranem.nem import RaNEM
    torch.manual_seed(0)
    return RaNEM(timm.create_model("test_resnet", num_classes=3).eval())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_nem_explainers_cast_images_to_the_classifiers_dtype(trained_nem, dtype):
    low = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dtype)
    got = baselines.ranem(trained_nem.classifier, low, nem=trained_nem)
    assert got.dtype == torch.float32 and got.shape == (2, 32, 32)
    torch.testing.assert_close(got, trained_nem.explain(low.float()))


@pytest.mark.parametrize("bad, match", [(torch.zeros(0, 3, 32, 32), "at least one image"),
                                        (with_nan(torch.zeros(1, 3, 32, 32)), "finite")])
def test_nem_explainers_refuse_empty_and_non_finite_batches(trained_nem, bad, match):
    for explain in (trained_nem.explain, lambda x: baselines.nemt(trained_nem.classifier, x, nem=trained_nem)):
        with pytest.raises(ValueError, match=match):
            explain(bad)


def test_training_refuses_non_finite_images(trained_nem):
    from ranem.classifiers import train_classifier
    from ranem.train import train
    bad = with_nan(torch.zeros(4, 3, 32, 32))
    with pytest.raises(ValueError, match="finite"):
        train(trained_nem, bad, epochs=1, samples=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="finite"):
        train_classifier(tiny_cnn(), bad, torch.zeros(4, dtype=torch.long), epochs=1, batch_size=4, progress=False)
