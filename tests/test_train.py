"""Tests of ranem.train: the frozen classifier, exact resume, checkpoints, and that training works."""
import pytest
import timm
import torch

from ranem import config
from ranem.nem import NEMt, RaNEM
from ranem.train import _decode, _encode, train


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=5).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _fresh(classifier, seed=0, cls=RaNEM):
    torch.manual_seed(seed)
    return cls(classifier)


OPTIONS = dict(samples=3, batch_size=8, seed=3, progress=False)


def test_classifier_weights_and_buffers_are_bit_identical_after_training(classifier, images):
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    assert any("running_mean" in k for k in before)  # BatchNorm statistics are part of the check
    for cls in (RaNEM, NEMt):
        nem = _fresh(classifier, cls=cls)
        decoder_before = {k: v.clone() for k, v in nem.decoder.state_dict().items()}
        train(nem, images, epochs=1, **OPTIONS)
        after = classifier.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert not classifier.training
        # ...while the decoder did change
        assert any(not torch.equal(decoder_before[k], v) for k, v in nem.decoder.state_dict().items())


class _Interrupt(Exception):
    pass


def _stop_after(epoch):
    def callback(e, history):
        if e == epoch:
            raise _Interrupt
    return callback


def test_interrupted_then_resumed_equals_uninterrupted(classifier, images, tmp_path):
    val = images[:4]
    full = _fresh(classifier)
    h_full = train(full, images, epochs=3, val_data=val, snapshot=val[:2], checkpoint=tmp_path / "a.safetensors",
                   **OPTIONS)

    part = _fresh(classifier)
    with pytest.raises(_Interrupt):
        train(part, images, epochs=3, val_data=val, snapshot=val[:2], checkpoint=tmp_path / "b.safetensors",
              callback=_stop_after(1), **OPTIONS)
    resumed = _fresh(classifier, seed=123)  # other initial weights: everything must come from the checkpoint
    torch.manual_seed(999)  # and another global RNG state
    h_res = train(resumed, images, epochs=3, val_data=val, snapshot=val[:2], checkpoint=tmp_path / "b.safetensors",
                  resume=True, **OPTIONS)

    for k, v in full.decoder.state_dict().items():
        assert torch.equal(v, resumed.decoder.state_dict()[k]), k
    assert h_res["step_loss"] == h_full["step_loss"]
    assert h_res["val_faithfulness"] == h_full["val_faithfulness"] and len(h_full["val_faithfulness"]) == 4
    assert torch.equal(h_res["snapshots"], h_full["snapshots"]) and h_full["snapshots"].shape == (4, 2, 32, 32)
    assert not list(tmp_path.glob("*.tmp"))

    # a finished run resumes to itself; other options refuse the checkpoint
    done = _fresh(classifier, seed=5)
    h_done = train(done, images, epochs=3, checkpoint=tmp_path / "b.safetensors", resume=True, **OPTIONS)
    assert h_done["step_loss"] == h_full["step_loss"]
    with pytest.raises(ValueError, match="another run"):
        train(_fresh(classifier), images, epochs=3, checkpoint=tmp_path / "b.safetensors", resume=True,
              **{**OPTIONS, "samples": 2})


def test_state_encoding_round_trips_nested_state():
    tensors = {}
    state = {"a": {0: torch.arange(3), 1: (0.9, 0.999)}, "b": [float("inf"), None, "x", True]}
    back = _decode(_encode(state, "s", tensors), tensors)
    assert torch.equal(back["a"][0], state["a"][0]) and back["a"][1] == [0.9, 0.999]
    assert back["b"] == state["b"] and set(back["a"]) == {0, 1}  # int keys stay ints
    assert set(tensors) == {"s.a.0"}


def test_data_forms_and_bad_arguments(classifier, images):
    labels = torch.zeros(len(images), dtype=torch.long)
    ds = torch.utils.data.TensorDataset(images, labels)
    for data in (ds, torch.utils.data.DataLoader(ds, batch_size=8)):
        h = train(_fresh(classifier), data, epochs=1, **OPTIONS)
        assert len(h["epoch_loss"]) == 1 and len(h["step_loss"]) == 3
    uint8 = (torch.rand(8, 3, 32, 32) * 255).to(torch.uint8)  # normalised with the classifier's mean/std
    assert len(train(_fresh(classifier), uint8, epochs=1, **OPTIONS)["step_loss"]) == 1
    nem = _fresh(classifier)
    with pytest.raises(TypeError, match="RaNEM or NEMt"):
        train(classifier, images, epochs=1)
    with pytest.raises(TypeError, match="Dataset"):
        train(nem, [1, 2, 3], epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        train(nem, images, epochs=0)
    with pytest.raises(ValueError, match="substrate_mode"):
        train(nem, images, epochs=1, substrate_mode="image")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        train(nem, torch.randn(8, 1, 32, 32), epochs=1, progress=False)


class WindowClassifier(torch.nn.Module):
    """A frozen classifier that, by construction, reads only a central window of the image: a
    faithful ranking must put the window first, so training has a known target. Its pooled
    features are standardised on ``calibration`` images, so its predictions are confident and
    differ between images."""

    def __init__(self, calibration: torch.Tensor, classes: int = 6):
        super().__init__()
        size = calibration.shape[-1]
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(32, classes)
        window = torch.zeros(1, 1, size, size)
        lo, hi = size // 4, size - size // 4
        window[..., lo:hi, lo:hi] = 1
        self.register_buffer("window", window)
        self.register_buffer("mu", torch.zeros(32))
        self.register_buffer("sd", torch.ones(32))
        with torch.no_grad():
            h = self.features(calibration)
            self.mu.copy_(h.mean(0))
            self.sd.copy_(h.std(0) + 1e-6)

    def features(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x * self.window)))).mean((2, 3))

    def forward(self, x):
        return 2 * self.fc((self.features(x) - self.mu) / self.sd)


def test_quick_training_on_synthetic_lowers_loss_and_beats_random():
    from ranem.data import normalize, synthetic
    from ranem.metrics import faithfulness

    s = config.settings("quick")
    images, _, _ = synthetic(256 + 32, s.synthetic_size, seed=7)
    x = normalize(images)
    train_x, test_x = x[:256], x[256:]
    torch.manual_seed(0)
    clf = WindowClassifier(train_x).eval().requires_grad_(False)
    clf.ranem_info = {"image_size": s.synthetic_size}
    config.seed_everything(0)
    nem = RaNEM(clf, layers=["conv1", "conv2"])

    def held_out_loss():  # the same draws (k, substrates, Gumbel noise) before and after training
        with torch.no_grad():
            return nem.eval().loss(test_x, torch.Generator().manual_seed(1), samples=16)[0].item()

    before = held_out_loss()
    nem.fit(train_x, epochs=2, batch_size=s.nem_batch, samples=s.nem_samples, progress=False)
    assert held_out_loss() < before - 0.02
    f_nem = faithfulness(clf, test_x, nem.explain(test_x), steps=16).mean()
    rand = torch.rand(test_x.shape[0], *test_x.shape[2:], generator=torch.Generator().manual_seed(0))
    f_rand = faithfulness(clf, test_x, rand, steps=16).mean()
    assert f_nem > f_rand + 0.05


def test_plateau_epoch_is_where_the_curve_stops_rising():
    from ranem.train import plateau_epoch
    assert plateau_epoch([0.28, 0.30, 0.35, 0.34, 0.355]) == 2  # later gains within 0.01
    assert plateau_epoch([0.28, 0.30, 0.35, 0.34, 0.37]) == 4  # still rising at the end
    assert plateau_epoch([0.3, 0.2, 0.1]) == 0
    assert plateau_epoch([0.28, 0.30, 0.35], tolerance=0.1) == 0
    with pytest.raises(ValueError, match="values is empty"):
        plateau_epoch([])
    with pytest.raises(ValueError, match="tolerance"):
        plateau_epoch([0.1], tolerance=float("nan"))


def test_get_nem_trains_at_the_size_its_classifier_is_fed(monkeypatch, tmp_path):
    from ranem import config, zoo
    monkeypatch.setenv("RANEM_CACHE", str(tmp_path))
    clf = torch.nn.Conv2d(3, 2, 1)
    clf.ranem_info = {"key": "fake-vit", "image_size": 24}
    monkeypatch.setattr(zoo, "get_classifier", lambda *a, **k: clf)
    seen = {}

    def fake_train(spec, classifier, folder, progress):
        seen.update(spec)
        raise RuntimeError("stop here")
    monkeypatch.setattr(zoo, "_train_nem", fake_train)
    with pytest.raises(RuntimeError, match="stop here"):
        zoo.get_nem("ranem", "vit", "imagenette", config.settings("quick", image_size=32))
    assert seen["image_size"] == 24
