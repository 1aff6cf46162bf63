"""Cache integrity: a truncated, corrupted or crafted cached file is refused with an error that names
it (or, where rebuilding is cheap or only a shortcut is lost, rebuilt with a warning); never used."""
import hashlib
import json
import struct

import pytest
import safetensors.torch
import timm
from safetensors import safe_open
import torch

from ranem import config
from ranem.cache import (CacheError, check_sha256, content_sha256, file_sha256, read_json, read_safetensors,
                         tensors_sha256)
from ranem.nem import NEM, NEMt, RaNEM
from ranem.train import train
from ranem.zoo import get_classifier

TINY = dict(cnn="test_resnet", synthetic_cnn="test_resnet", synthetic_size=16, synthetic_train=48, synthetic_val=16,
            classifier_epochs=1, classifier_batch=16)


def flip_data_byte(path, offset_from_end=1):
    """Flip every bit of one byte of a safetensors file's tensor data (after its JSON header)."""
    raw = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    i = len(raw) - offset_from_end
    assert i >= 8 + header_len, "the byte must lie in the tensor data"
    raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def truncate(path, keep=0.5):
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=5).eval()


# ----------------------------------------------------------------------------- the primitives
def test_file_sha256_is_hashlib_of_the_bytes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 5000)  # > 1 MiB: several chunks
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_tensors_sha256_sees_one_flipped_bit_a_rename_and_a_reshape():
    base = {"a": torch.arange(12, dtype=torch.float32), "b": torch.ones(2, 3)}
    digest = tensors_sha256(base)
    assert tensors_sha256({"b": base["b"].clone(), "a": base["a"].clone()}) == digest  # order-free, value-based
    flipped = base["a"].clone()
    flipped.view(torch.int32)[3] ^= 1
    assert tensors_sha256({**base, "a": flipped}) != digest
    assert tensors_sha256({"c": base["a"], "b": base["b"]}) != digest
    assert tensors_sha256({**base, "a": base["a"].reshape(3, 4)}) != digest


def test_read_json_names_a_truncated_file(tmp_path):
    path = tmp_path / "note.json"
    path.write_text(json.dumps({"a": 1, "b": [1, 2, 3]})[:9])
    with pytest.raises(CacheError, match=r"note\.json.*not valid JSON.*delete it"):
        read_json(path, "delete it")
    path.write_text("[1, 2]")
    with pytest.raises(CacheError, match="not an object"):
        read_json(path, "delete it")


@pytest.mark.parametrize("damage", [lambda p: truncate(p, 0.5), lambda p: truncate(p, 0.0),
                                    lambda p: p.write_bytes(b"\xff" * 64)])
def test_read_safetensors_names_a_damaged_file(tmp_path, damage):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"w": torch.randn(64, 64)}, str(path))
    damage(path)
    with pytest.raises(CacheError, match=r"w\.safetensors cannot be read as safetensors.*rebuild it"):
        read_safetensors(path, "rebuild it")


def test_check_sha256_refuses_a_changed_file_and_accepts_old_entries(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    check_sha256(path, file_sha256(path), "x")
    check_sha256(path, None, "x")  # written before digests were recorded
    path.write_bytes(b"weightz")
    with pytest.raises(CacheError, match=r"w\.bin does not match the SHA-256"):
        check_sha256(path, hashlib.sha256(b"weights").hexdigest(), "x")


# ----------------------------------------------------------------------------- NEM files
@pytest.fixture
def saved_nem(classifier, tmp_path):
    torch.manual_seed(0)
    nem = RaNEM(classifier)
    return nem.save(tmp_path / "nem.safetensors")


def test_a_saved_nem_loads_bit_identically(classifier, saved_nem):
    a = NEM.load(saved_nem, classifier)
    b = NEM.load(saved_nem, classifier)
    for k, v in a.decoder.state_dict().items():
        assert torch.equal(v, b.decoder.state_dict()[k])


def test_a_flipped_byte_in_nem_weights_is_refused(classifier, saved_nem):
    flip_data_byte(saved_nem)
    with pytest.raises(CacheError, match=r"nem\.safetensors.*SHA-256.*delete it"):
        NEM.load(saved_nem, classifier)


def test_no_single_flipped_byte_of_a_nem_file_goes_unnoticed(classifier, saved_nem):
    """Bytes of the header (config, history, fingerprint) and of the weights, flipped one at a time:
    every damaged file is refused with a clear error, none loads."""
    good = saved_nem.read_bytes()
    (header_len,) = struct.unpack("<Q", good[:8])
    rng = torch.Generator().manual_seed(0)
    header = torch.randint(8, 8 + header_len, (120,), generator=rng).tolist()
    weights = torch.randint(8 + header_len, len(good), (40,), generator=rng).tolist()
    for i in [0, 3, 7] + header + weights:
        damaged = bytearray(good)
        damaged[i] ^= 0xFF
        saved_nem.write_bytes(bytes(damaged))
        with pytest.raises((CacheError, ValueError)):
            NEM.load(saved_nem, classifier)


def test_a_truncated_nem_file_is_named(classifier, saved_nem):
    truncate(saved_nem, 0.7)
    with pytest.raises(CacheError, match=r"nem\.safetensors cannot be read"):
        NEM.load(saved_nem, classifier)


def _rewrite_meta(path, change):
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["ranem"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(meta)
    meta.pop("sha256")
    meta["sha256"] = content_sha256(tensors, meta)  # a crafted file can carry a matching digest
    safetensors.torch.save_file(tensors, str(path), metadata={"ranem": json.dumps(meta)})


@pytest.mark.parametrize("config_change, match", [
    ({"decoder_channels": [26_000, 128, 64, 32, 16]}, r"decoder_channels must hold ints in \[1, 2048\]"),
    ({"decoder_channels": []}, "1 to 8 block widths"),
    ({"dropout": 1.5}, "dropout"),
    ({"layers": "blocks"}, "layers must be None or a list"),
    ({"width_multiplier": 104}, "unexpected keyword"),
])
def test_a_crafted_nem_config_is_refused_before_anything_is_built(classifier, saved_nem, config_change, match):
    _rewrite_meta(saved_nem, lambda meta: meta["config"].update(config_change))
    with pytest.raises(CacheError, match=rf"nem\.safetensors holds an invalid ranem config.*{match}"):
        NEM.load(saved_nem, classifier)


def test_an_unknown_nem_kind_is_refused(classifier, saved_nem):
    _rewrite_meta(saved_nem, lambda meta: meta.update(kind="evil"))
    with pytest.raises(CacheError, match="known kinds are"):
        NEM.load(saved_nem, classifier)


def test_a_changed_number_in_the_history_is_refused(classifier, saved_nem):
    _rewrite_meta(saved_nem, lambda meta: meta["history"].update(val_faithfulness=[0.9]))
    raw = saved_nem.read_bytes()
    fixed = raw.replace(b"[0.9]", b"[0.8]")
    assert fixed != raw
    saved_nem.write_bytes(fixed)
    with pytest.raises(CacheError, match="content does not match"):
        NEM.load(saved_nem, classifier)


def test_the_constructor_checks_its_config_too(classifier):
    with pytest.raises(ValueError, match="decoder_channels"):
        NEMt(classifier, decoder_channels=(16, 0))
    with pytest.raises(TypeError, match="layers"):
        RaNEM(classifier, layers=[1, 2])


# ----------------------------------------------------------------------------- training checkpoints
def test_a_corrupted_checkpoint_warns_and_training_starts_afresh(classifier, tmp_path):
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # one step per epoch
    options = dict(epochs=2, samples=2, batch_size=8, seed=1, progress=False)
    torch.manual_seed(0)
    reference = train(RaNEM(classifier), images, **options)
    ckpt = tmp_path / "ckpt.safetensors"
    torch.manual_seed(0)
    train(RaNEM(classifier), images, checkpoint=ckpt, **{**options, "epochs": 1})
    flip_data_byte(ckpt)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"ckpt\.safetensors does not match the SHA-256.*starts again from epoch 0"):
        again = train(RaNEM(classifier), images, checkpoint=ckpt, resume=True, **options)
    assert again["step_loss"] == reference["step_loss"]  # a full, fresh run: nothing of the damaged file used
    truncate(ckpt, 0.5)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"ckpt\.safetensors cannot be read"):
        train(RaNEM(classifier), images, checkpoint=ckpt, resume=True, **options)


# ----------------------------------------------------------------------------- cached classifiers
@pytest.fixture
def cached_classifier(tmp_path, monkeypatch):
    monkeypatch.setenv("RANEM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RANEM_DEVICE", "cpu")
    s = config.settings("quick", **TINY)
    model = get_classifier("cnn", "synthetic", settings=s, progress=False)
    folder = config.cache_dir() / "classifiers"
    return s, folder / f"{model.ranem_info['key']}.safetensors", folder / f"{model.ranem_info['key']}.json"


def test_the_classifier_note_records_its_weights_digest(cached_classifier):
    _, weights, note = cached_classifier
    assert json.loads(note.read_text())["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_a_flipped_byte_in_classifier_weights_is_refused_with_the_fix(cached_classifier):
    s, weights, note = cached_classifier
    flip_data_byte(weights)
    with pytest.raises(CacheError, match=rf"{weights.name} does not match the SHA-256.*delete {weights.name} "
                                         rf"and {note.name}"):
        get_classifier("cnn", "synthetic", settings=s, progress=False)


def test_a_truncated_classifier_note_is_named(cached_classifier):
    s, _, note = cached_classifier
    truncate(note, 0.5)
    with pytest.raises(CacheError, match=rf"{note.name} is not valid JSON"):
        get_classifier("cnn", "synthetic", settings=s, progress=False)
