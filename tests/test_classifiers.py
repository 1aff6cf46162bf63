"""Tests of ranem.classifiers (building, inference, training) and of the book's classifier cache
in ranem.zoo (get_classifier and its key).

Tiny timm models (timm's own ``test_*`` architectures) on 16-px images keep the file fast.
Imagenette is replaced by random uint8 arrays, so no dataset is needed.
"""
import json
import socket
import subprocess
import sys

import pytest
import safetensors.torch
import timm
import torch

from ranem import classifiers, config, data, zoo
from ranem.classifiers import accuracy, create_classifier, predict
from ranem.zoo import cache_key, classifier_spec, get_classifier

TINY = dict(cnn="test_resnet", synthetic_cnn="test_resnet", vit="test_vit", vit_kwargs={"img_size": 16, "patch_size": 8},
            synthetic_size=16, synthetic_train=48, synthetic_val=16, image_size=16,
            imagenette_train=40, imagenette_val=20, classifier_epochs=1, classifier_batch=16)


@pytest.fixture
def tiny():
    return config.settings("quick", **TINY)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RANEM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RANEM_DEVICE", "cpu")
    return tmp_path / "cache" / "classifiers"


@pytest.fixture
def fake_imagenette(monkeypatch):
    """Random uint8 'Imagenette' arrays, so the tests need no dataset on disk."""
    def arrays(split, size, limit=0, root=None, seed=0):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = limit or 50
        return (torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                torch.arange(n) % 10)
    monkeypatch.setattr(data, "imagenette_arrays", arrays)


@pytest.fixture
def count_training(monkeypatch):
    calls = []
    real = zoo.train_classifier  # the name the zoo calls

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(zoo, "train_classifier", counted)
    return calls


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _assert_same_function(model, reference, size: int):
    """get_classifier folds BatchNorms into convolutions (ranem.fold): other weights, the same logits."""
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x), reference.eval()(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- building
def test_create_classifier_from_scratch_has_requested_head():
    model = create_classifier("test_resnet", num_classes=7).eval()
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    assert create_classifier("test_resnet").eval()(torch.randn(1, 3, 16, 16)).shape == (1, 10)


@pytest.mark.parametrize("name", ["resnet10", "not_a_model", 3, None])
def test_bad_model_name_is_a_clear_error(name):
    with pytest.raises(ValueError, match="not a timm model"):
        create_classifier(name)


def test_close_names_are_suggested():
    with pytest.raises(ValueError, match="resnet10t"):
        create_classifier("resnet10tt")


@pytest.mark.parametrize("num_classes", [0, -1, 2.5])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        create_classifier("test_resnet", num_classes=num_classes)


def test_local_weights_file_is_loaded_exactly(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "resnet10t.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = create_classifier("resnet10t", weights=path)
    _assert_same_state(loaded.state_dict(), safetensors.torch.load_file(str(path)))
    assert loaded.get_classifier().out_features == 1000


def test_local_weights_as_torch_state_dict(tmp_path):
    source = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    _assert_same_state(create_classifier("test_resnet", weights=path).state_dict(), source.state_dict())


def test_weights_that_do_not_fit_the_model(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(timm.create_model("test_resnet").state_dict(), str(path))
    with pytest.raises(ValueError, match="do not fit"):
        create_classifier("test_vit", weights=path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        create_classifier("test_resnet", weights=tmp_path / "missing.safetensors")


def _go_offline(monkeypatch):
    """timm.create_model as without a network: pretrained=True fails as timm does."""
    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("network is unreachable")
        return real(name, **kwargs)
    monkeypatch.setattr(classifiers.timm, "create_model", offline)


def test_offline_pretrained_suggests_weights_argument(monkeypatch):
    _go_offline(monkeypatch)
    with pytest.raises(RuntimeError, match="weights=PATH"):
        create_classifier("test_resnet", pretrained=True)


# ---------------------------------------------------------------- inference
def test_accuracy_matches_a_hand_computation():
    torch.manual_seed(1)
    model = create_classifier("test_resnet", num_classes=4).eval()
    images, labels = torch.randn(10, 3, 16, 16), torch.randint(0, 4, (10,))
    with torch.no_grad():
        hand = sum(int(model(images[i:i + 1]).argmax() == labels[i]) for i in range(10)) / 10
    assert accuracy(model, images, labels, batch_size=3) == pytest.approx(hand)
    # Labels equal to the predictions: exactly 1.
    assert accuracy(model, images, predict(model, images).argmax(1)) == 1.0


def test_uint8_images_are_scaled_and_normalised():
    model = create_classifier("test_resnet", num_classes=3).eval()
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    with torch.no_grad():
        expected = model(data.normalize(images.float() / 255, mean, std))
    torch.testing.assert_close(predict(model, images, mean=mean, std=std), expected)
    with pytest.raises(ValueError, match="mean/std"):
        predict(model, images)  # no ranem_info to take the normalisation from


def test_imagenet_head_is_cut_to_the_label_index():
    model = create_classifier("test_resnet", num_classes=1000).eval()
    model.ranem_info = {"label_index": [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]}
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        full = model(images)
    torch.testing.assert_close(predict(model, images), full[:, model.ranem_info["label_index"]])


@pytest.mark.parametrize("images,labels,match", [
    (torch.randn(3, 16, 16), torch.zeros(3, dtype=torch.long), "images"),
    (torch.randn(3, 3, 16, 16), torch.zeros(2, dtype=torch.long), "labels"),
    (torch.zeros(3, 3, 16, 16, dtype=torch.int32), torch.zeros(3, dtype=torch.long), "uint8 or floating"),
])
def test_accuracy_rejects_bad_input(images, labels, match):
    with pytest.raises(ValueError, match=match):
        accuracy(create_classifier("test_resnet"), images, labels)


# ---------------------------------------------------------------- training
def test_augment_is_a_per_image_flip_and_shift_of_the_padded_image():
    x = torch.randn(6, 3, 8, 8)
    out = classifiers._augment(x, pad=2, flip=True, gen=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # replay the same draws, one image at a time
    flips = torch.rand(6, generator=g) < 0.5
    dy, dx = torch.randint(0, 5, (6,), generator=g), torch.randint(0, 5, (6,), generator=g)
    for i in range(6):
        img = x[i].flip(2) if flips[i] else x[i]
        padded = torch.nn.functional.pad(img[None], (2, 2, 2, 2), mode="reflect")[0]
        torch.testing.assert_close(out[i], padded[:, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8])
    assert torch.equal(classifiers._augment(x, pad=0, flip=False, gen=g), x)


def test_training_is_seeded_and_learns_a_trivial_task():
    # Class = brightness of the image: any working recipe separates it in a few steps.
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = (torch.rand(64, 3, 16, 16, generator=g) * 0.3 + 0.6 * labels.view(-1, 1, 1, 1)).clamp(0, 1)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = create_classifier("test_resnet", num_classes=2)
        history = classifiers.train_classifier(model, images, labels, images, labels, epochs=2,
                                               batch_size=16, lr=5e-3, progress=False)
        runs.append(_state(model))
    _assert_same_state(*runs)
    assert history["val_accuracy"] >= 0.9
    assert len(history["epochs"]) == 2 and not model.training


def test_training_stops_at_the_first_epoch_that_reaches_stop_at():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = (torch.rand(64, 3, 16, 16, generator=g) * 0.3 + 0.6 * labels.view(-1, 1, 1, 1)).clamp(0, 1)
    accuracies = []
    for stop_at in (None, 0.5):
        torch.manual_seed(0)
        model = create_classifier("test_resnet", num_classes=2)
        history = classifiers.train_classifier(model, images, labels, images, labels, epochs=4, batch_size=16,
                                               lr=5e-3, stop_at=stop_at, progress=False)
        accuracies.append([e["val_accuracy"] for e in history["epochs"]])
    full, stopped = accuracies
    assert len(full) == 4
    first = next(i for i, a in enumerate(full) if a >= 0.5)  # same seed: the same epochs until the stop
    assert stopped == full[:first + 1]
    assert not model.training


def test_gradient_clipping_is_applied_every_step(monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return real(params, max_norm, *args, **kwargs)
    monkeypatch.setattr(classifiers.nn.utils, "clip_grad_norm_", spy)
    model = create_classifier("test_vit", img_size=16, patch_size=8)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 2
    classifiers.train_classifier(model, x, y, epochs=2, batch_size=4, grad_clip=0.5, progress=False)
    assert calls == [0.5] * 4
    classifiers.train_classifier(model, x, y, epochs=1, batch_size=4, progress=False)
    assert len(calls) == 4  # no clipping unless asked


def test_training_rejects_bad_arguments():
    model, x, y = create_classifier("test_resnet"), torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="epochs"):
        classifiers.train_classifier(model, x, y, epochs=0)
    with pytest.raises(ValueError, match="val_images and val_labels"):
        classifiers.train_classifier(model, x, y, x)
    with pytest.raises(ValueError, match="stop_at"):
        classifiers.train_classifier(model, x, y, x, y, stop_at=1.5)
    with pytest.raises(ValueError, match="stop_at needs val_images"):
        classifiers.train_classifier(model, x, y, stop_at=0.9)


# ---------------------------------------------------------------- the cache
def test_cache_round_trip_trains_once(tiny, cache, count_training):
    first = get_classifier("cnn", "synthetic", settings=tiny, progress=False)
    second = get_classifier("cnn", "synthetic", settings=tiny, progress=False)
    assert len(count_training) == 1
    assert not first.ranem_info["cached"] and second.ranem_info["cached"]
    _assert_same_state(first.state_dict(), second.state_dict())
    key = first.ranem_info["key"]
    # The stored weights are the trained, unfolded ones; the returned model computes the same function.
    spec = first.ranem_info["spec"]
    stored = create_classifier(spec["name"], num_classes=first.ranem_info["num_classes"], **spec["model_kwargs"])
    stored.load_state_dict(safetensors.torch.load_file(str(cache / f"{key}.safetensors")))
    _assert_same_function(second, stored, spec["image_size"])
    # Atomic writes: exactly the two artefacts, no temp file, no lock left behind.
    assert sorted(p.name for p in cache.iterdir()) == [f"{key}.json", f"{key}.safetensors"]
    assert json.loads((cache / f"{key}.json").read_text())["val_accuracy"] == second.ranem_info["val_accuracy"]


def test_returned_model_is_frozen_and_described(tiny, cache, fake_imagenette):
    model = get_classifier("vit", "imagenette", settings=tiny, progress=False)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    info = model.ranem_info
    for field in ("name", "dataset", "classes", "num_classes", "image_size", "mean", "std", "val_accuracy",
                  "train_seconds", "epochs", "key", "label_index"):
        assert field in info, field
    assert info["name"] == "test_vit" and info["classes"] == list(data.IMAGENETTE_CLASSES)
    assert info["label_index"] == list(range(10)) and info["image_size"] == 16
    x, y = data.imagenette_arrays("val", 16, limit=20)
    assert info["val_accuracy"] == pytest.approx(accuracy(model, x, y))
    assert model(data.normalize(x[:2].float() / 255)).shape == (2, 10)


def test_local_imagenet_weights_give_an_imagenette_classifier(tiny, cache, fake_imagenette, tmp_path,
                                                              count_training):
    source = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / "in1k.safetensors"
    safetensors.torch.save_file(source.state_dict(), str(path))
    model = get_classifier("cnn", "imagenette", settings=tiny, weights=path, progress=False)
    assert not count_training
    _assert_same_function(model, source, 16)
    assert model.ranem_info["label_index"] == list(data.IMAGENETTE_IMAGENET_INDEX)
    x, y = data.imagenette_arrays("val", 16, limit=20)
    assert predict(model, x).shape == (20, 10)
    assert model.ranem_info["val_accuracy"] == pytest.approx(accuracy(model, x, y))
    with pytest.raises(ValueError, match="weights"):
        get_classifier("cnn", "synthetic", settings=tiny, weights=path)


def test_unreachable_hub_falls_back_to_training_here(tiny, cache, fake_imagenette, monkeypatch,
                                                    count_training):
    _go_offline(monkeypatch)
    settings = config.settings("quick", **TINY, pretrained=("cnn",))
    with pytest.warns(UserWarning, match="test_resnet: training it here instead"):
        model = get_classifier("cnn", "imagenette", settings=settings, progress=False)
    assert len(count_training) == 1
    assert model.ranem_info["source"] == "trained" and model.ranem_info["label_index"] == list(range(10))


def test_unreachable_hub_cnn_is_replaced_by_the_offline_wheel(tiny, cache, fake_imagenette, monkeypatch,
                                                              count_training):
    _go_offline(monkeypatch)
    settings = config.settings("quick", **TINY, pretrained=("cnn",), cnn_offline="tf_efficientnet_lite0")
    with pytest.warns(UserWarning, match="using tf_efficientnet_lite0"):
        model = get_classifier("cnn", "imagenette", settings=settings, progress=False)
    assert not count_training
    info = model.ranem_info
    assert info["source"] == "wheel" and info["name"] == "tf_efficientnet_lite0" and info["image_size"] == 16
    assert info["label_index"] == list(data.IMAGENETTE_IMAGENET_INDEX) and info["mean"] == [0.5, 0.5, 0.5]


def test_wheel_classifier_needs_no_training_and_caches_its_accuracy(tiny, cache, fake_imagenette, count_training):
    settings = config.settings("quick", **{**TINY, "cnn": "tf_efficientnet_lite0"}, pretrained=("cnn",))
    spec = classifier_spec("cnn", "imagenette", settings)
    assert spec["source"] == "wheel" and spec["wheel"] == "efficientnet_lite0"
    model = get_classifier("cnn", "imagenette", settings=settings, progress=False)
    x, y = data.imagenette_arrays("val", 16, limit=20)
    assert not count_training and model.ranem_info["val_accuracy"] == pytest.approx(accuracy(model, x, y))
    assert (cache / f"{cache_key(spec)}.json").is_file()
    # The ViT of the same settings is not in ``pretrained``: it is trained here.
    assert classifier_spec("vit", "imagenette", settings)["source"] == "trained"


def test_key_follows_the_configuration(tiny):
    key = cache_key(classifier_spec("cnn", "synthetic", tiny))
    assert key == cache_key(classifier_spec("cnn", "synthetic", config.settings("quick", **TINY)))
    changed = [
        classifier_spec("cnn", "synthetic", config.settings("quick", **{**TINY, "classifier_epochs": 2})),
        classifier_spec("cnn", "synthetic", config.settings("quick", **{**TINY, "synthetic_train": 50})),
        classifier_spec("cnn", "synthetic", config.settings("quick", **{**TINY, "synthetic_cnn": "resnet10t"})),
        classifier_spec("cnn", "imagenette", tiny),
        classifier_spec("vit", "synthetic", tiny),
    ]
    keys = [cache_key(s) for s in changed]
    assert len(set(keys + [key])) == len(keys) + 1
    vit = cache_key(classifier_spec("vit", "synthetic", tiny))
    other = config.settings("quick", **{**TINY, "vit_kwargs": {"img_size": 16, "patch_size": 4}})
    assert cache_key(classifier_spec("vit", "synthetic", other)) != vit


def test_key_follows_the_code_version(tiny, monkeypatch):
    key = cache_key(classifier_spec("cnn", "synthetic", tiny))
    monkeypatch.setattr(zoo, "CACHE_VERSION", zoo.CACHE_VERSION + 1)
    assert cache_key(classifier_spec("cnn", "synthetic", tiny)) != key


@pytest.mark.parametrize("kind,dataset", [("mlp", "synthetic"), ("cnn", "cifar10"), ("CNN", "imagenette")])
def test_bad_kind_or_dataset(kind, dataset, tiny):
    with pytest.raises(ValueError, match="kind" if kind != "cnn" else "dataset"):
        get_classifier(kind, dataset, settings=tiny)


def test_a_stale_lock_from_a_dead_process_is_taken_over(tiny, cache, count_training):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    key = cache_key(classifier_spec("cnn", "synthetic", tiny))
    cache.mkdir(parents=True)
    (cache / f"{key}.lock").write_text(f"{socket.gethostname()} {dead.pid}")
    get_classifier("cnn", "synthetic", settings=tiny, progress=False)
    assert len(count_training) == 1 and not (cache / f"{key}.lock").exists()


def test_the_synthetic_cnn_is_its_own_architecture():
    s = config.settings("cpu")
    assert classifier_spec("cnn", "synthetic", s)["name"] == s.synthetic_cnn == "resnet10t"
    assert classifier_spec("cnn", "imagenette", s)["name"] == s.cnn
