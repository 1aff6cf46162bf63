"""Every explainer (and NEM.explain) takes uint8 images like normalised ones, bounds memory with
batch_size without changing its maps, and can show a progress bar."""
import pytest
import timm
import torch

from ranem import baselines
from ranem.baselines import get_explainer
from ranem.data.transforms import model_statistics, normalize
from ranem.nem import RaNEM

torch.set_num_threads(1)

FAST = {"integrated_gradients": dict(steps=4), "gradient_shap": dict(samples=3), "rise": dict(masks=32),
        "smooth_pixel_mask": dict(iterations=4), "iba": dict(steps=2, draws=3)}
METHODS = ["saliency", "integrated_gradients", "gradient_shap", "grad_cam_pp", "rise", "smooth_pixel_mask", "iba"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=4).eval()
    # Statistics that differ from ImageNet's, so a wrong normalisation would show.
    net.ranem_info = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    return net


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def nem(model):
    torch.manual_seed(0)
    return RaNEM(model).eval()


def _explainer(name, nem):
    return get_explainer(name, nem=nem) if name == "ranem" else get_explainer(name, **FAST.get(name, {}))


def test_model_statistics_follow_ranem_info_then_pretrained_cfg(model):
    assert model_statistics(model) == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    plain = timm.create_model("test_resnet", num_classes=4)
    assert model_statistics(plain) == (tuple(plain.pretrained_cfg["mean"]), tuple(plain.pretrained_cfg["std"]))


@pytest.mark.parametrize("name", METHODS + ["ranem"])
def test_uint8_images_are_normalised_with_the_models_statistics(model, images, nem, name):
    fn = _explainer(name, nem)
    by_hand = (images.float() / 255 - torch.tensor([0.5, 0.4, 0.3])[:, None, None]) / \
        torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    torch.testing.assert_close(fn(model, images), fn(model, by_hand))


def test_nem_explain_takes_uint8_like_fit_does(model, images, nem):
    x = normalize(images, nem.mean, nem.std)
    torch.testing.assert_close(nem.explain(images), nem.explain(x))


@pytest.mark.parametrize("name", METHODS + ["ranem"])
def test_batch_size_bounds_the_chunk_and_keeps_the_maps(model, images, nem, name):
    fn = _explainer(name, nem)
    x = normalize(images, *model_statistics(model))
    seen = []  # images per forward, read at the first convolution (NEMs bypass model.forward)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        whole = fn(model, x, batch_size=None if name != "rise" else 5 * 32)
        seen.clear()
        chunked = fn(model, x, batch_size=2)
    finally:
        hook.remove()
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)
    copies = {"gradient_shap": 3, "iba": 3}.get(name, 1)
    limit = 2 * copies if name != "integrated_gradients" else 32  # IG: its internal_batch_size inputs
    assert max(seen) <= limit


def test_nem_explain_batch_size(nem, images):
    x = normalize(images, nem.mean, nem.std)
    torch.testing.assert_close(nem.explain(x, batch_size=2), nem.explain(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        nem.explain(x, batch_size=0)


@pytest.mark.parametrize("name", ["saliency", "rise", "iba"])
def test_bad_batch_size_is_refused(model, images, name):
    with pytest.raises(ValueError, match="batch_size"):
        get_explainer(name, **FAST.get(name, {}))(model, images, batch_size=0)


BARS = {"rise": "RISE", "iba": "IBA", "smooth_pixel_mask": "Smooth Pixel Mask",
        "integrated_gradients": "Integrated Gradients", "gradient_shap": "Grad-SHAP"}


@pytest.mark.parametrize("name", sorted(BARS))
def test_long_explainers_show_a_progress_bar_only_when_asked(model, images, name, capsys):
    fn = get_explainer(name, **FAST[name])
    quiet = fn(model, images[:2])
    assert BARS[name] not in capsys.readouterr().err
    loud = fn(model, images[:2], progress=True)
    assert BARS[name] in capsys.readouterr().err  # tqdm.auto: a text bar on stderr outside notebooks
    torch.testing.assert_close(quiet, loud)
    with pytest.raises(TypeError, match="progress"):
        fn(model, images[:2], progress="yes") if name != "rise" else baselines.iba(model, images[:2], progress="yes")
