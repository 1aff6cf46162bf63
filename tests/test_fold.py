"""ranem.fold: BatchNorms folded into their convolutions give the same function, or nothing changes."""
import copy

import pytest
import timm
import torch
from torch import nn

from ranem.fold import FoldedNorm, fold_batchnorm


def _with_running_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters: a fresh BatchNorm is the identity, which
    would hide a folding error."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


def _batchnorms(model):
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet10t", "tf_efficientnet_lite0"])
def test_folded_timm_models_compute_the_same_logits_and_input_gradients(name):
    model = _with_running_stats(timm.create_model(name, num_classes=10))
    reference = copy.deepcopy(model)
    x = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    n = fold_batchnorm(model, x[:2])
    assert n == _batchnorms(reference) and _batchnorms(model) == 0  # every BatchNorm follows a convolution
    torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    grads = []
    for m in (model, reference):
        xx = x.clone().requires_grad_(True)
        m(xx)[:, 3].sum().backward()
        grads.append(xx.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-5)


def test_names_stay_so_hooks_find_the_same_modules():
    model = _with_running_stats(timm.create_model("tf_efficientnet_lite0", num_classes=10))
    fold_batchnorm(model, torch.randn(2, 3, 32, 32))
    assert isinstance(model.get_submodule("bn2"), FoldedNorm)
    assert isinstance(model.get_submodule("bn2").act, nn.ReLU6)  # timm's fused activation is kept


class _SharedOutput(nn.Module):
    """A convolution whose output feeds a BatchNorm and a shortcut: folding would change the shortcut."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return (self.bn(y) + y).mean((2, 3))


def test_a_fold_that_would_change_the_output_leaves_the_model_untouched():
    model = _with_running_stats(_SharedOutput())
    before = copy.deepcopy(model.state_dict())
    assert fold_batchnorm(model, torch.randn(2, 3, 8, 8)) == 0
    assert isinstance(model.bn, nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_batchnorm_after_something_else_is_not_folded():
    model = _with_running_stats(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten()))
    assert fold_batchnorm(model, torch.randn(2, 3, 8, 8)) == 0
    assert isinstance(model[2], nn.BatchNorm2d)


def test_a_model_without_batchnorm_is_unchanged():
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=16).eval()
    assert fold_batchnorm(model, torch.randn(2, 3, 32, 32)) == 0


def test_bad_input_is_refused_with_its_name():
    model = _with_running_stats(timm.create_model("resnet10t", num_classes=10))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model.train(), torch.randn(2, 3, 32, 32))
    with pytest.raises(TypeError, match="model"):
        fold_batchnorm("resnet", torch.randn(2, 3, 32, 32))
    with pytest.raises(TypeError, match="example"):
        fold_batchnorm(model.eval(), [[0.0]])
    with pytest.raises(ValueError, match="example"):
        fold_batchnorm(model.eval(), torch.full((1, 3, 32, 32), float("nan")))


def test_a_folded_nem_explains_as_before():
    from ranem.nem import RaNEM
    classifier = _with_running_stats(timm.create_model("resnet10t", num_classes=10)).requires_grad_(False)
    nem = RaNEM(classifier).eval()
    _with_running_stats(nem.decoder, seed=1)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    before = nem.explain(x)
    n = fold_batchnorm(nem, x[:2])
    assert n > 0 and _batchnorms(nem) == 0  # the classifier's and the decoder's
    torch.testing.assert_close(nem.explain(x), before, rtol=1e-4, atol=1e-4)


def test_a_folded_nem_attaches_to_another_copy_of_its_classifier():
    # Chapters explain with the classifier object they loaded, not the NEM's own: attach() must carry
    # a folded decoder over (its state dict has other keys than a fresh decoder's).
    from ranem.baselines.nems import attach
    from ranem.nem import RaNEM
    classifier = _with_running_stats(timm.create_model("resnet10t", num_classes=10)).requires_grad_(False)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    fold_batchnorm(classifier, x[:2])
    nem = RaNEM(classifier).eval()
    _with_running_stats(nem.decoder, seed=4)
    fold_batchnorm(nem, x[:2])
    twin = attach(nem, copy.deepcopy(classifier))
    assert twin is not nem and _batchnorms(twin) == 0
    torch.testing.assert_close(twin.explain(x), nem.explain(x), rtol=1e-5, atol=1e-5)
