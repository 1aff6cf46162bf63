"""Tests of ranem.data: synthetic shapes, normalisation, Imagenette layouts, download and cache.

No test touches the network: the one function that does (``_fetch``) is monkeypatched everywhere
a download could start. Imagenette is exercised on tiny generated folders.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import math
import shutil
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from ranem import data
from ranem.data import imagenette as imagenette_module

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# Synthetic shapes
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes():
    return data.synthetic(1200, 64, seed=1)


def test_synthetic_is_deterministic_per_seed():
    a, b, c = data.synthetic(50, 32, seed=3), data.synthetic(50, 32, seed=3), data.synthetic(50, 32, seed=4)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[2], c[2])


def test_synthetic_output_is_pinned_to_its_version():
    """If this fails, the generator changed: bump data.SYNTHETIC_VERSION (cached models trained on
    synthetic data key on it) and update the numbers below."""
    images, labels, masks = data.synthetic(6, 32, seed=0)
    assert data.SYNTHETIC_VERSION == 2
    assert labels.tolist() == [0, 5, 1, 3, 2, 4]
    # tolerances absorb last-bit differences of float kernels between CPUs
    assert np.allclose(masks.sum((1, 2)).tolist(), [107, 12, 60, 15, 16, 83], atol=2)
    assert np.allclose(images.mean((1, 2, 3)).tolist(), [0.1177, 0.1194, 0.1342, 0.1023, 0.133, 0.2398], atol=2e-3)


@pytest.mark.parametrize("n,size", [(1, 16), (7, 33), (60, 64)])
def test_synthetic_shapes_dtypes_ranges(n, size):
    images, labels, masks = data.synthetic(n, size, seed=0)
    assert images.shape == (n, 3, size, size) and images.dtype == torch.float32
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert masks.shape == (n, size, size) and masks.dtype == torch.bool
    assert images.min() >= 0 and images.max() <= 1 and images.is_contiguous()
    assert labels.min() >= 0 and labels.max() < len(data.SYNTHETIC_CLASSES)
    assert masks.flatten(1).any(1).all(), "every image holds an object"


def test_synthetic_labels_balanced(shapes):
    counts = torch.bincount(shapes[1], minlength=len(data.SYNTHETIC_CLASSES))
    assert len(data.SYNTHETIC_CLASSES) >= 6 and counts.max() - counts.min() <= 1


# Areas of the shapes in units of the squared radius of the disc that holds them, from their
# geometry (computed here independently of the implementation's membership tests).
_UNIT_AREA = {
    "circle": math.pi,
    "square": 2.0,
    "triangle": 3 * math.sqrt(3) / 4,
    "cross": 2 * (0.6 * 1.9) - 0.6**2,
    "ring": math.pi * (1 - 0.55**2),
    "star": 5 * 0.45 * math.sin(math.pi / 5),
}


def test_mask_areas_match_scale_range(shapes):
    _, labels, masks = shapes
    size = masks.shape[-1]
    area = masks.flatten(1).sum(1).float()
    for k, name in enumerate(data.SYNTHETIC_CLASSES):
        a = area[labels == k]
        lo = _UNIT_AREA[name] * (0.1 * size / 2) ** 2  # diameter 10% of the side
        hi = _UNIT_AREA[name] * (0.4 * size / 2) ** 2  # diameter 40% of the side
        # rasterisation error is at most about one pixel along the perimeter (~ 2 pi r)
        slack_lo, slack_hi = 2 * math.pi * 0.05 * size, 2 * math.pi * 0.2 * size
        assert a.min() >= lo - slack_lo and a.max() <= hi + slack_hi, name
        assert a.max() > 4 * a.min(), f"{name}: scales should span a factor of 16 in area"


def test_mask_is_exactly_the_object(shapes):
    """Inside the mask every pixel has the object's hue (one colour under a scalar illumination);
    the pixels just outside it mostly do not."""
    images, _, masks = shapes
    images, masks = images[:300], masks[:300]
    chroma = images / images.norm(dim=1, keepdim=True).clamp_min(1e-6)  # (n, 3, S, S)
    ring = torch.nn.functional.max_pool2d(masks[:, None].float(), 3, 1, 1)[:, 0].bool() & ~masks
    inside_spread, outside_same = [], []
    for i in range(len(masks)):
        inside = chroma[i][:, masks[i]]
        ref = inside.mean(1, keepdim=True)
        ref = ref / ref.norm()
        inside_spread.append((inside - ref).norm(dim=0).max())
        outside_same.append(((chroma[i][:, ring[i]] - ref).norm(dim=0) < 1e-3).float().mean())
    assert torch.stack(inside_spread).max() < 1e-3
    assert torch.stack(outside_same).mean() < 0.05


def test_objects_stand_out_from_background(shapes):
    images, _, masks = shapes
    m = masks[:, None].float()
    ring = torch.nn.functional.max_pool2d(m, 5, 1, 2) - m
    inside = (images * m).sum((2, 3)) / m.sum((2, 3))
    around = (images * ring).sum((2, 3)) / ring.sum((2, 3)).clamp_min(1)
    contrast = (inside - around).norm(dim=1)
    assert contrast.median() > 0.2 and (contrast > 0.05).float().mean() > 0.95
    # Figure brighter than ground: the object's largest channel beats that of its surroundings.
    assert (inside.amax(1) > around.amax(1) + 0.1).float().mean() > 0.95


def _mask_features(masks):
    """Rotation- and scale-invariant shape descriptors: radial histogram around the centroid and
    compactness. Nothing but the mask goes in."""
    n, s, _ = masks.shape
    c = torch.arange(s).float() + 0.5
    w = masks.float()
    a = w.sum((1, 2))
    cy, cx = (w.sum(2) * c).sum(1) / a, (w.sum(1) * c).sum(1) / a
    r = ((c.view(1, 1, s) - cx.view(n, 1, 1)) ** 2 + (c.view(1, s, 1) - cy.view(n, 1, 1)) ** 2).sqrt()
    rmax = (r * w).amax((1, 2)) + 0.5
    bins = (r / rmax.view(n, 1, 1) * 8).clamp(max=7).long() * masks
    hist = torch.zeros(n, 8).scatter_add_(1, bins.view(n, -1), w.view(n, -1)) / a[:, None]
    return torch.cat([hist, (a / (math.pi * rmax**2))[:, None]], 1)


def _nearest_centroid_accuracy(f_train, y_train, f_test, y_test, k):
    sd = f_train.std(0).clamp_min(1e-6)
    centroids = torch.stack([f_train[y_train == c].mean(0) for c in range(k)])
    pred = (((f_test[:, None] - centroids[None]) / sd) ** 2).sum(-1).argmin(1)
    return (pred == y_test).float().mean().item()


def test_label_lives_in_the_object_not_the_background(shapes):
    images, labels, masks = shapes
    test_images, test_labels, test_masks = data.synthetic(600, 64, seed=2)
    k = len(data.SYNTHETIC_CLASSES)
    # The object's shape alone recovers the class far above chance (1/6).
    acc_shape = _nearest_centroid_accuracy(_mask_features(masks), labels, _mask_features(test_masks), test_labels, k)
    assert acc_shape > 0.6

    def background_stats(x, m):
        bg = (~m)[:, None].float()
        mean = (x * bg).sum((2, 3)) / bg.sum((2, 3))
        var = ((x - mean[..., None, None]) ** 2 * bg).sum((2, 3)) / bg.sum((2, 3))
        return torch.cat([mean, var.sqrt()], 1)

    # Background statistics carry no class information: chance-level accuracy, equal class means.
    f_bg, f_bg_test = background_stats(images, masks), background_stats(test_images, test_masks)
    acc_bg = _nearest_centroid_accuracy(f_bg, labels, f_bg_test, test_labels, k)
    assert acc_bg < 0.26  # chance is 0.167 with a standard error of 0.015 on 600 images
    for j in range(f_bg.shape[1]):
        groups = [f_bg[labels == c, j].numpy() for c in range(k)]
        assert stats.f_oneway(*groups).pvalue > 1e-3


def test_synthetic_rejects_bad_arguments():
    for kwargs in ({"n": 0}, {"n": 2.5}, {"n": True}, {"n": 4, "size": 8}, {"n": 4, "seed": -1}):
        with pytest.raises(ValueError, match=next(iter(k for k in kwargs if k != "n"), "n")):
            data.synthetic(**kwargs)


def test_synthetic_shapes_dataset():
    raw = data.synthetic(12, 32, seed=5)
    ds = data.SyntheticShapes(12, 32, seed=5)
    assert len(ds) == 12 and ds.classes == data.SYNTHETIC_CLASSES
    x, y = ds[3]
    assert torch.equal(x, raw[0][3]) and y == raw[1][3]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ds = data.SyntheticShapes(12, 32, seed=5, mean=mean, std=std, return_mask=True)
    x, y, m = ds[7]
    expected = (raw[0][7] - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6) and torch.equal(m, raw[2][7])
    assert torch.equal(ds.masks, raw[2]) and torch.equal(ds.labels, raw[1])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert [t.shape for t in batch] == [(4, 3, 32, 32), (4,), (4, 32, 32)]
    with pytest.raises(ValueError, match="mean and std"):
        data.SyntheticShapes(4, 32, mean=mean)


# ------------------------------------------------------------------------------------------
# Normalisation
# ------------------------------------------------------------------------------------------

def test_normalize_uint8_and_float_agree_and_invert():
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8, generator=g)
    x = data.normalize(u8)
    ref = (u8.double() / 255 - torch.tensor(data.IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)) \
        / torch.tensor(data.IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    assert x.dtype == torch.float32 and torch.allclose(x.double(), ref, atol=1e-6)
    assert torch.allclose(data.normalize(u8.float() / 255), x, atol=1e-6)
    assert torch.allclose(data.denormalize(x), u8.float() / 255, atol=1e-6)
    assert data.normalize(u8[0]).shape == (3, 5, 4)


def test_normalize_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.normalize(torch.full((1, 3, 2, 2), 2.0))
    with pytest.raises(ValueError, match="one value per channel"):
        data.normalize(torch.zeros(1, 3, 2, 2), mean=(0.5, 0.5), std=(1, 1))
    with pytest.raises(ValueError, match="std"):
        data.normalize(torch.zeros(1, 3, 2, 2), std=(1, 0, 1))
    with pytest.raises(TypeError):
        data.normalize(np.zeros((1, 3, 2, 2)))
    with pytest.raises(TypeError):
        data.normalize(torch.zeros(1, 3, 2, 2, dtype=torch.int32))


# ------------------------------------------------------------------------------------------
# Imagenette: class table
# ------------------------------------------------------------------------------------------

def test_class_table_csv_equals_literal():
    with open(ROOT / "data" / "imagenette_classes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["wnid"] for r in rows] == list(data.IMAGENETTE_WNIDS)
    assert [r["name"] for r in rows] == list(data.IMAGENETTE_CLASSES)
    assert [int(r["imagenet_index"]) for r in rows] == list(data.IMAGENETTE_IMAGENET_INDEX)


def test_imagenet_indices_match_timm_synset_order():
    # timm ships the ImageNet-1k synset list in class-index order; read it without importing timm.
    spec = importlib.util.find_spec("timm")
    synsets = (Path(spec.origin).parent / "data" / "_info" / "imagenet_synsets.txt").read_text().split()
    assert len(synsets) == 1000
    assert [synsets.index(w) for w in data.IMAGENETTE_WNIDS] == list(data.IMAGENETTE_IMAGENET_INDEX)


# ------------------------------------------------------------------------------------------
# Imagenette: tiny generated layouts
# ------------------------------------------------------------------------------------------

PER_CLASS = 3


def _write_layout(folder: Path) -> None:
    """3 images per class and split: an RGB JPEG (non-square), a greyscale JPEG, a CMYK JPEG or
    a PNG. Pixel values encode the class so labels can be checked from the pixels."""
    for split in ("train", "val"):
        for label, wnid in enumerate(data.IMAGENETTE_WNIDS):
            d = folder / split / wnid
            d.mkdir(parents=True)
            colour = (20 * label + 30, 200 - 15 * label, 90)
            Image.new("RGB", (40, 30), colour).save(d / f"{wnid}_a.JPEG", quality=95)
            Image.new("L", (24, 24), 25 * label).save(d / f"{wnid}_b.JPEG", quality=95)
            if label % 2:
                Image.new("CMYK", (20, 20), (10, 20, 30, 0)).save(d / f"{wnid}_c.JPEG")
            else:
                Image.new("RGB", (20, 20), colour).save(d / f"{wnid}_c.png")
            (d / "notes.txt").write_text("not an image")


@pytest.fixture(scope="module")
def layout_template(tmp_path_factory):
    folder = tmp_path_factory.mktemp("template") / "imagenette2-320"
    _write_layout(folder)
    return folder


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(url, dest, expected_bytes=None):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(imagenette_module, "_fetch", refuse)


@pytest.mark.parametrize("layout", data.IMAGENETTE_LAYOUTS)
def test_every_layout_is_found_and_loaded(tmp_path, layout_template, layout):
    shutil.copytree(layout_template, tmp_path / layout)
    assert data.find_imagenette(tmp_path) == tmp_path / layout
    assert data.find_imagenette(tmp_path / layout) == tmp_path / layout  # the layout folder itself
    ds = data.Imagenette("val", root=tmp_path, size=16)
    assert len(ds) == 10 * PER_CLASS and ds.classes == data.IMAGENETTE_CLASSES
    assert ds.imagenet_index == data.IMAGENETTE_IMAGENET_INDEX
    assert ds.labels.tolist() == [c for c in range(10) for _ in range(PER_CLASS)]
    assert all(f.parent.name == data.IMAGENETTE_WNIDS[y] for f, y in zip(ds.files, ds.labels.tolist()))
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == ds.labels[i]


def test_greyscale_cmyk_png_become_rgb_without_crop(tmp_path, layout_template):
    shutil.copytree(layout_template, tmp_path / "imagenette2-160")
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    ds = data.Imagenette("train", root=tmp_path, size=8, mean=mean, std=std)
    for i, path in enumerate(ds.files):
        x, label = ds[i]
        assert x.shape == (3, 8, 8)
        if path.stem.endswith("_b"):  # greyscale: three equal channels with the encoded value
            assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
            assert abs(x.mean().item() * 255 - 25 * label) < 3
        elif path.suffix == ".png" or path.stem.endswith("_a"):  # RGB, resized whole
            expected = torch.tensor((20 * label + 30, 200 - 15 * label, 90)).float() / 255
            assert torch.allclose(x.mean((1, 2)), expected, atol=3 / 255)


def test_layout_preference_order(tmp_path, layout_template):
    for layout in ("imagenette2", "imagenette2-160", "imagenette2-224"):
        shutil.copytree(layout_template, tmp_path / layout)
    assert data.find_imagenette(tmp_path).name == "imagenette2-224"
    shutil.rmtree(tmp_path / "imagenette2-224")
    assert data.find_imagenette(tmp_path).name == "imagenette2-160"


def test_limit_is_class_balanced_and_seeded(tmp_path, layout_template):
    shutil.copytree(layout_template, tmp_path / "imagenette2-320")
    a = data.Imagenette("val", root=tmp_path, size=8, limit=15, seed=0)
    counts = torch.bincount(a.labels, minlength=10)
    assert len(a) == 15 and counts.max() - counts.min() <= 1 and counts.min() >= 1
    assert a.files == data.Imagenette("val", root=tmp_path, size=8, limit=15, seed=0).files
    others = [data.Imagenette("val", root=tmp_path, size=8, limit=15, seed=s).files for s in range(1, 6)]
    assert any(files != a.files for files in others)
    assert len(data.Imagenette("val", root=tmp_path, size=8, limit=10_000)) == 10 * PER_CLASS
    with pytest.raises(ValueError, match="limit"):
        data.Imagenette("val", root=tmp_path, size=8, limit=-1)
    with pytest.raises(ValueError, match="split"):
        data.Imagenette("test", root=tmp_path, size=8)


def test_missing_data_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RANEM_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        data.find_imagenette()  # download allowed, but the (patched) network is down
    message = str(info.value)
    for needle in ("RANEM_DATA", str(tmp_path), "imagenette2-320/{train,val}/<wnid>/*.JPEG",
                   "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz", "network disabled"):
        assert needle in message
    assert list(tmp_path.iterdir()) == [], "a failed download leaves nothing behind"

    def must_not_download(*args, **kwargs):
        raise AssertionError("download=False must not touch the network")

    monkeypatch.setattr(imagenette_module, "_fetch", must_not_download)
    with pytest.raises(FileNotFoundError, match="download=False"):
        data.Imagenette("val", download=False)


def _fake_archive(tmp_path, layout_template, variant="imagenette2-320"):
    archive = tmp_path / "archive.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(layout_template, arcname=variant)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_verifies_checksum_and_extracts_atomically(tmp_path, layout_template, monkeypatch):
    archive, md5 = _fake_archive(tmp_path, layout_template)
    calls = []

    def fake_fetch(url, dest, expected_bytes=None):
        calls.append(url)
        shutil.copyfile(archive, dest)
        return hashlib.md5(Path(dest).read_bytes()).hexdigest()

    monkeypatch.setattr(imagenette_module, "_fetch", fake_fetch)
    root = tmp_path / "root"
    url = data.IMAGENETTE_ARCHIVES["imagenette2-320"][0]
    # A wrong checksum is refused and leaves no trace.
    monkeypatch.setitem(data.IMAGENETTE_ARCHIVES, "imagenette2-320", (url, "0" * 32, 1))
    with pytest.raises(FileNotFoundError, match="checksum"):
        data.find_imagenette(root)
    assert list(root.iterdir()) == []
    # The right one gives the layout, and only the layout.
    monkeypatch.setitem(data.IMAGENETTE_ARCHIVES, "imagenette2-320", (url, md5, 1))
    assert data.find_imagenette(root) == root / "imagenette2-320"
    assert [p.name for p in root.iterdir()] == ["imagenette2-320"]
    assert len(data.Imagenette("train", root=root, size=8)) == 10 * PER_CLASS
    assert calls == [url, url]


# ------------------------------------------------------------------------------------------
# Cached arrays
# ------------------------------------------------------------------------------------------

def test_imagenette_arrays_cache_round_trip(tmp_path, layout_template, monkeypatch):
    shutil.copytree(layout_template, tmp_path / "data" / "imagenette2-224")
    cache = tmp_path / "cache"
    monkeypatch.setenv("RANEM_CACHE", str(cache))
    decodes = []
    real_decode = imagenette_module._decode_all
    monkeypatch.setattr(imagenette_module, "_decode_all", lambda *a: decodes.append(1) or real_decode(*a))
    images, labels = data.imagenette_arrays("val", 12, root=tmp_path / "data")
    assert images.shape == (30, 3, 12, 12) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    again, labels_again = data.imagenette_arrays("val", 12, root=tmp_path / "data")
    assert len(decodes) == 1, "the second call reads the cache"
    assert torch.equal(images, again) and torch.equal(labels, labels_again)
    files = sorted(p.name for p in (cache / "imagenette").iterdir())
    assert len(files) == 1 and files[0].endswith(".safetensors") and "val-12px-all" in files[0]
    # Same order and pixels as the Dataset.
    ds = data.Imagenette("val", root=tmp_path / "data", size=12)
    assert torch.equal(labels, ds.labels)
    for i in (0, 4, 29):
        assert torch.allclose(data.normalize(images[i]), ds[i][0], atol=1e-6)
    # A subset is its own cache entry and equals the Dataset's subset.
    sub, sub_labels = data.imagenette_arrays("val", 12, limit=10, seed=3, root=tmp_path / "data")
    assert torch.equal(sub_labels, data.Imagenette("val", root=tmp_path / "data", size=12, limit=10, seed=3).labels)
    assert len(list((cache / "imagenette").iterdir())) == 2


def test_imagenette_arrays_failed_write_leaves_nothing(tmp_path, layout_template, monkeypatch):
    import safetensors.torch

    shutil.copytree(layout_template, tmp_path / "imagenette2-320")
    monkeypatch.setenv("RANEM_CACHE", str(tmp_path / "cache"))

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        data.imagenette_arrays("train", 8, root=tmp_path)
    assert list((tmp_path / "cache" / "imagenette").iterdir()) == []


def test_mean_std_from_timm_config(tmp_path, layout_template):
    model = torch.nn.Linear(1, 1)
    model.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "input_size": (3, 48, 48)}
    assert data.mean_std_for(model) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    image = Image.new("RGB", (30, 20), (255, 0, 128))
    x = data.transform_for(model, 6)(image)
    assert x.shape == (3, 6, 6)
    assert torch.allclose(x.mean((1, 2)), (torch.tensor([255, 0, 128]) / 255 - 0.5) / 0.25, atol=1e-2)
    shutil.copytree(layout_template, tmp_path / "imagenette2-320")
    ds = data.Imagenette.for_model(model, "val", root=tmp_path)
    assert ds.size == 48 and ds.mean == (0.5, 0.5, 0.5) and ds.std == (0.25, 0.25, 0.25)
    assert ds[0][0].shape == (3, 48, 48)
    assert data.Imagenette.for_model(model, "val", size=10, root=tmp_path)[0][0].shape == (3, 10, 10)


def test_evaluation_images_are_one_seeded_draw_at_every_size(monkeypatch):
    from ranem.data import evaluation
    calls = []

    def arrays(split, size, limit=0, root=None):
        calls.append((split, size, limit))
        labels = torch.arange(40) // 4  # stored class by class, as Imagenette's split is
        return labels.view(-1, 1, 1, 1).expand(40, 3, size, size).to(torch.uint8), labels
    monkeypatch.setattr(evaluation, "imagenette_arrays", arrays)
    x16, y16 = evaluation.evaluation_images(12, 16)
    x8, y8 = evaluation.evaluation_images(12, 8)
    assert x16.shape == (12, 3, 16, 16) and x8.shape == (12, 3, 8, 8)
    assert torch.equal(y16, y8) and torch.equal(x16[:, 0, 0, 0], y16.to(torch.uint8))  # same images
    assert len(set(y16.tolist())) > 3  # spans the classes, unlike the first 12 of the split
    assert torch.equal(evaluation.evaluation_images(5, 16)[1], y16[:5])  # a prefix of the same draw
    assert calls[0] == ("val", 16, 0)
    with pytest.raises(ValueError, match="at most the 40"):
        evaluation.evaluation_images(41, 16)
    with pytest.raises(ValueError, match="n must be"):
        evaluation.evaluation_images(0, 16)
