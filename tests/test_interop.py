"""Captum and Quantus adapters (ranem.interop), and one target rule for every NEM entry point."""
import numpy as np
import pytest
import timm
import torch
from captum.attr import Attribution
from captum.metrics import infidelity, sensitivity_max

import ranem
from ranem.interop import NEMAttribution, quantus_explain_func
from ranem.metrics import faithfulness
from ranem.nem import RaNEM

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=4).eval()


@pytest.fixture(scope="module")
def nem(model):
    torch.manual_seed(1)
    return RaNEM(model).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _delta(x):
    return 0.05 * torch.linspace(-1, 1, x[0].numel()).view_as(x[0]).expand_as(x)


# ----------------------------------------------------------------------------- Captum
def test_nem_attribution_is_a_captum_attribution_shaped_like_its_inputs(nem, x):
    method = NEMAttribution(nem)
    assert isinstance(method, Attribution) and method.forward_func is nem.classifier
    assert not method.has_convergence_delta()
    single = method.attribute(x)
    as_tuple = method.attribute((x,))
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    expected = nem.explain(x)[:, None].expand_as(x)
    torch.testing.assert_close(single, expected)
    torch.testing.assert_close(as_tuple[0], expected)
    with pytest.raises(ValueError, match="one such tensor"):
        method.attribute((x, x))
    with pytest.raises(TypeError, match="torch.Tensor"):
        method.attribute(x.numpy())
    with pytest.raises(TypeError, match="NEM"):
        NEMAttribution(nem.classifier)


def _entry_points(nem):
    return {
        "NEM.explain": lambda x, t: nem.explain(x, t),
        "NEM.attribute": lambda x, t: nem.attribute(x, t)[:, 0],
        "NEMAttribution": lambda x, t: NEMAttribution(nem).attribute((x,), target=t)[0][:, 0],
        "ranem.explain": lambda x, t: ranem.explain("ranem", nem.classifier, x, t, nem=nem),
    }


@pytest.mark.parametrize("entry", ["NEM.explain", "NEM.attribute", "NEMAttribution", "ranem.explain"])
def test_every_nem_entry_point_takes_the_top1_and_refuses_another_target(nem, x, entry):
    fn = _entry_points(nem)[entry]
    top1 = nem.classifier(x).argmax(1)
    reference = nem.explain(x)
    torch.testing.assert_close(fn(x, None), reference)
    torch.testing.assert_close(fn(x, top1), reference)
    torch.testing.assert_close(fn(x[:1], int(top1[0])), reference[:1])
    other = (top1 + 1) % 4
    with pytest.raises(ValueError, match=r"top-1 class of every image.*images \[0, 1, 2\]"):
        fn(x, other)
    with pytest.raises(TypeError, match="integer"):
        fn(x, top1.float())


def test_metrics_give_nems_no_target_so_the_randomisation_test_runs(nem, x):
    # The randomised copy has another top-1 than the original's label: the NEM must not be asked it.
    corr = ranem.metrics.mprt(ranem.get_explainer("ranem", nem=nem), nem.classifier, x)
    assert corr.shape == (3,) and torch.isfinite(corr).all()


def test_captum_sensitivity_max_matches_a_direct_computation(nem, x):
    method = NEMAttribution(nem)

    def shift(inputs, radius):  # one deterministic perturbation, so the expected value is computable
        return inputs + _delta(inputs)

    got = sensitivity_max(method.attribute, x, perturb_func=shift, n_perturb_samples=1)
    e, e_shift = nem.explain(x), nem.explain(x + _delta(x))
    expected = (e_shift - e).flatten(1).norm(dim=1) / e.flatten(1).norm(dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # and with Captum's own random perturbations it runs on tuples and gives one value per image
    random = sensitivity_max(method.attribute, (x,), perturb_radius=0.02, n_perturb_samples=3)
    assert random.shape == (3,) and torch.isfinite(random).all() and (random >= 0).all()


def test_captum_infidelity_matches_a_direct_computation(nem, x):
    method = NEMAttribution(nem)
    attributions = method.attribute(x)
    top1 = nem.classifier(x).argmax(1)

    def perturb(inputs):
        d = _delta(inputs)
        return d, inputs - d

    got = infidelity(nem.classifier, perturb, x, attributions, target=top1, n_perturb_samples=1)
    with torch.no_grad():
        drop = nem.classifier(x).gather(1, top1[:, None]) - nem.classifier(x - _delta(x)).gather(1, top1[:, None])
    expected = ((attributions * _delta(x)).flatten(1).sum(1) - drop[:, 0]) ** 2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- Quantus
@pytest.mark.parametrize("name", ["saliency", "grad_cam_pp", "ranem"])
def test_quantus_explain_func_contract(model, nem, x, name):
    options = {"nem": nem} if name == "ranem" else {}
    explain_func = quantus_explain_func(name, **options)
    inputs = x.numpy()  # Quantus hands NumPy batches and NumPy labels
    targets = model(x).argmax(1).numpy()
    a = explain_func(model=model, inputs=inputs, targets=targets, device="cpu", softmax=False)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (3, 1, 32, 32)
    maps = ranem.explain(name, model, x, torch.from_numpy(targets), **options)
    np.testing.assert_allclose(a[:, 0], maps.numpy(), rtol=1e-6, atol=1e-7)
    # The maps a Quantus metric receives score what ranem's own metric scores on the same maps.
    torch.testing.assert_close(faithfulness(model, x, torch.from_numpy(a[:, 0]), steps=8),
                               faithfulness(model, x, maps, steps=8))


def test_quantus_explain_func_refuses_what_it_cannot_do(model, nem, x):
    with pytest.raises(ValueError, match="unknown explainer"):
        quantus_explain_func("no-such-method")
    with pytest.raises(ValueError, match="registry name"):
        quantus_explain_func(lambda m, x, t: x[:, 0], steps=3)
    with pytest.raises(TypeError, match="NumPy array"):
        quantus_explain_func("saliency")(model, "images", None)
    wrong = (model(x).argmax(1) + 1) % 4
    with pytest.raises(ValueError, match="top-1"):
        quantus_explain_func("ranem", nem=nem)(model, x.numpy(), wrong.numpy())


def test_quantus_explain_func_takes_any_callable(model, x):
    a = quantus_explain_func(lambda m, xb, t: xb.abs().sum(1))(model, x.numpy(), None)
    np.testing.assert_allclose(a[:, 0], x.abs().sum(1).numpy(), rtol=1e-6)


def test_quantus_pixel_flipping_scores_ranem_maps_as_ranems_deletion_curve():
    # Quantus is optional (heavy: OpenCV, pandas, scikit-image, scikit-learn), so this runs where it
    # is installed. With one channel (Quantus counts features per value, ranem per pixel), a zero
    # baseline (ranem's "zeros" substrate) and softmax scores, Quantus's PixelFlipping curve is
    # ranem's deletion curve without its first point (the clean image).
    quantus = pytest.importorskip("quantus")
    from ranem.metrics import deletion_curve
    torch.manual_seed(0)
    gray = timm.create_model("test_resnet", num_classes=4, in_chans=1).eval()
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = gray(x).argmax(1)
    explain_func = quantus_explain_func("saliency")
    metric = quantus.PixelFlipping(features_in_step=16, perturb_baseline=0.0, abs=False, normalise=False,
                                   return_auc_per_sample=False, disable_warnings=True, display_progressbar=False)
    curves = np.array(metric(model=gray, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
                             explain_func=explain_func, softmax=True, device="cpu"))
    maps = torch.from_numpy(explain_func(gray, x.numpy(), y.numpy())[:, 0])
    ours = deletion_curve(gray, x, maps, pixels_per_step=16, substrate="zeros")[:, 1:]
    np.testing.assert_allclose(curves, ours.numpy(), rtol=1e-5, atol=1e-6)
