import random

import numpy as np
import pytest
import torch

from ranem import config


def test_every_mode_has_settings():
    for mode in config.MODES:
        s = config.settings(mode)
        assert s.mode == mode
        assert s.image_size > 0 and s.synthetic_size > 0


def test_modes_scale_up():
    quick, cpu, gpu = (config.settings(m) for m in ("quick", "cpu", "gpu"))
    assert quick.synthetic_train < cpu.synthetic_train <= gpu.synthetic_train
    assert quick.n_eval < cpu.n_eval < gpu.n_eval
    assert gpu.image_size == 224 and gpu.nem_samples == 6


def test_mode_from_environment(monkeypatch):
    monkeypatch.setenv("RANEM_MODE", "cpu")
    assert config.get_mode() == "cpu"
    assert config.settings().mode == "cpu"
    monkeypatch.setenv("RANEM_MODE", " Quick ")
    assert config.get_mode() == "quick"


def test_default_mode_follows_cuda(monkeypatch):
    monkeypatch.delenv("RANEM_MODE", raising=False)
    assert config.get_mode() == ("gpu" if torch.cuda.is_available() else "cpu")


def test_bad_mode_lists_valid_ones(monkeypatch):
    monkeypatch.setenv("RANEM_MODE", "fast")
    with pytest.raises(ValueError, match="RANEM_MODE.*quick, cpu, gpu"):
        config.get_mode()
    with pytest.raises(ValueError, match="quick, cpu, gpu"):
        config.settings("turbo")


def test_overrides_do_not_change_the_mode_table():
    base = config.settings("quick").n_eval
    assert config.settings("quick", n_eval=base + 3).n_eval == base + 3
    assert config.settings("quick").n_eval == base


def test_seed_everything_is_reproducible():
    g1 = config.seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g1))
    g2 = config.seed_everything(3)
    b = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g2))
    assert a[0] == b[0] and a[1] == b[1]
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    with pytest.raises(ValueError, match="seed"):
        config.seed_everything(-1)


def test_device_override(monkeypatch):
    monkeypatch.setenv("RANEM_DEVICE", "cpu")
    assert config.device() == torch.device("cpu")


def test_data_root_and_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RANEM_DATA", str(tmp_path))
    assert config.data_root() == tmp_path.resolve()
    monkeypatch.delenv("RANEM_CACHE", raising=False)
    assert config.cache_dir() == tmp_path.resolve() / "ranem-cache"
    monkeypatch.setenv("RANEM_CACHE", str(tmp_path / "elsewhere"))
    assert config.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("RANEM_DATA")
    if config.in_checkout():  # the tests run from a checkout (make test); an installed copy: see below
        assert config.data_root() == config.PROJECT_ROOT / "data"


def test_an_installed_wheel_keeps_its_data_out_of_site_packages(monkeypatch, tmp_path):
    monkeypatch.delenv("RANEM_DATA", raising=False)
    monkeypatch.delenv("RANEM_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    site = tmp_path / "site-packages"
    (site / "ranem").mkdir(parents=True)
    (site / "ranem" / "__init__.py").write_text("")
    assert not config.in_checkout(site)  # no pyproject.toml beside the package
    monkeypatch.setattr(config, "in_checkout", lambda root=config.PROJECT_ROOT: False)
    assert config.data_root() == tmp_path / ".cache" / "ranem" / "data"
    assert config.cache_dir() == tmp_path / ".cache" / "ranem" / "data" / "ranem-cache"


def test_every_mode_can_run_offline():
    """cpu and gpu modes' CNNs come from wheels; no mode's ViT needs the hub."""
    from ranem.zoo import WHEEL_ARCHITECTURES
    cpu, gpu = config.settings("cpu"), config.settings("gpu")
    assert cpu.cnn in WHEEL_ARCHITECTURES and cpu.pretrained == ("cnn",)
    assert gpu.cnn in WHEEL_ARCHITECTURES and gpu.pretrained == ("cnn",) and config.image_size_for("cnn", gpu) == 224
    assert config.image_size_for("vit", cpu) == 64 and config.image_size_for("cnn", cpu) == 144
    with pytest.raises(ValueError, match="pretrained must be a tuple"):
        config.settings("cpu", pretrained=True)
