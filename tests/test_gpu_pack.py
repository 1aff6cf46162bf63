"""gpu/pack.py: the folder for the offline GPU run keeps to its budget and looks like Imagenette."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ranem.data import IMAGENETTE_WNIDS
from ranem.data.imagenette import _list_files, find_imagenette

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_pack", ROOT / "gpu" / "pack.py")
pack_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pack_module)


@pytest.fixture
def source(tmp_path):
    """A tiny Imagenette in the full-size layout: 4 training and 2 validation images per class, of
    varied sizes (the packer resizes them to 224 px as the loader would)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "src" / "imagenette2"
    for split, n in (("train", 4), ("val", 2)):
        for wnid in IMAGENETTE_WNIDS:
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(100, 300, size=2)
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / split / wnid / f"{wnid}_{i}.JPEG")
    return root


@pytest.fixture
def no_weights(monkeypatch):
    def fake(dest):
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "tf_efficientnet_lite2.safetensors").write_bytes(b"\0" * 1000)
        (dest / "tf_efficientnet_lite2.json").write_text("{}")
        return sorted(dest.iterdir())
    monkeypatch.setattr(pack_module, "copy_weights", fake)


def test_the_pack_keeps_to_its_budget_and_the_loader_reads_it(tmp_path, source, no_weights):
    out = tmp_path / "pack"
    one = len(pack_module.encode(next(source.glob("val/*/*.JPEG")), 75))
    budget = 1000 + 4096 + 2 + int(34.5 * one * 1.3)  # weights, manifest, the 20 val images and a part of train
    manifest = pack_module.pack(out, budget=budget, n_val=20, quality=75, source=source, wheels=False)
    assert pack_module.folder_bytes(out) == manifest["total_bytes"] <= budget
    layout = find_imagenette(out / "data", download=False)
    assert layout.name == "imagenette2-224"
    val, val_labels = _list_files(layout, "val")
    train, train_labels = _list_files(layout, "train")
    assert len(val) == manifest["images"]["val"]["images"] == 20 and np.bincount(val_labels).tolist() == [2] * 10
    assert 0 < len(train) == manifest["images"]["train"]["images"] < 40
    counts = np.bincount(train_labels, minlength=10)
    assert counts.max() - counts.min() <= 1  # any prefix of the round robin is class-balanced
    with Image.open(train[0]) as im:
        assert im.format == "JPEG" and im.size == (224, 224)
    assert json.loads((out / "MANIFEST.json").read_text())["total_bytes"] == manifest["total_bytes"]
    assert "total" in pack_module.report(manifest)


def test_a_budget_too_small_for_the_validation_images_is_refused(tmp_path, source, no_weights):
    with pytest.raises(ValueError, match="holds only"):
        pack_module.pack(tmp_path / "pack", budget=20_000, n_val=20, source=source, wheels=False)
    with pytest.raises(ValueError, match="alone take"):
        pack_module.pack(tmp_path / "pack", budget=2_000, n_val=20, source=source, wheels=False)


def test_the_default_budget_leaves_room_for_the_working_tree():
    tree = pack_module.tree_bytes()
    assert 0 < tree < pack_module.CARRY_LIMIT
    assert pack_module.default_budget() == pack_module.CARRY_LIMIT - tree - pack_module.MARGIN


def test_a_built_pack_fits_what_gpu_mode_asks():
    """Checks the folder ``make gpu-pack`` built, when there is one."""
    manifest_path = ROOT / "gpu-pack" / "MANIFEST.json"
    if not manifest_path.is_file():
        pytest.skip("no gpu-pack/ here (make gpu-pack builds it)")
    m = json.loads(manifest_path.read_text())
    assert m["total_bytes"] <= m["budget_bytes"] <= pack_module.CARRY_LIMIT
    assert all(m["images"][s]["images"] >= n for s, n in m["gpu_needs"].items())
    assert {"prodigyopt", "captum", "nbclient", "ipykernel", "myst_nb"} <= {n.split("-")[0] for n in m["wheels"]}
