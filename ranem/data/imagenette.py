"""Imagenette in any published layout: discovery, download, a Dataset and a cached uint8 fast path."""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ranem import _checks, config
from ranem.cache import atomic_write
from ranem.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

# --------------------------------------------------------------------------------------------
# Imagenette: class table, layouts, download
# --------------------------------------------------------------------------------------------

# The committed table data/imagenette_classes.csv, also kept here so that an installed package
# (which does not ship data/) has it; tests/test_data.py checks that the two agree. ImageNet-1k
# indices follow the standard synset order (timm's imagenet_synsets.txt).
_IMAGENETTE_TABLE = (
    ("n01440764", "tench", 0),
    ("n02102040", "English springer", 217),
    ("n02979186", "cassette player", 482),
    ("n03000684", "chain saw", 491),
    ("n03028079", "church", 497),
    ("n03394916", "French horn", 566),
    ("n03417042", "garbage truck", 569),
    ("n03425413", "gas pump", 571),
    ("n03445777", "golf ball", 574),
    ("n03888257", "parachute", 701),
)
IMAGENETTE_WNIDS = tuple(row[0] for row in _IMAGENETTE_TABLE)
IMAGENETTE_CLASSES = tuple(row[1] for row in _IMAGENETTE_TABLE)
IMAGENETTE_IMAGENET_INDEX = tuple(row[2] for row in _IMAGENETTE_TABLE)

# Searched in this order: the 224 px copy (exactly the paper's input size, cheapest to decode), then
# the 320 px archive (still at least 224 px on the shorter side), the 160 px one, and the full-size
# images last (slowest to decode). Any of them serves any resolution: images are resized anyway.
IMAGENETTE_LAYOUTS = ("imagenette2-224", "imagenette2-320", "imagenette2-160", "imagenette2")
_URL = "https://s3.amazonaws.com/fast-ai-imageclas/{}.tgz"
# Whole-archive MD5s as published with torchvision.datasets.Imagenette (fast.ai's own checks.txt
# hashes only the first MiB); sizes from fast.ai's checks.txt, for the progress bar only.
IMAGENETTE_ARCHIVES = {
    "imagenette2-320": (_URL.format("imagenette2-320"), "3df6f0d01a2c9592104656642f5e78a3", 341663724),
    "imagenette2-160": (_URL.format("imagenette2-160"), "e793b78cc4c9e9a4ccc0c1155377a412", 99003388),
    "imagenette2": (_URL.format("imagenette2"), "fe2fc210e6bb7c5664d602c3cd71e612", 1557161267),
}
_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
_SPLITS = ("train", "val")


def _is_layout(path: Path) -> bool:
    return all((path / split / wnid).is_dir() for split in _SPLITS for wnid in IMAGENETTE_WNIDS)


def _fetch(url: str, dest: Path, expected_bytes: int | None = None) -> str:
    """Stream ``url`` into ``dest`` with a progress bar; return the file's MD5 (hex)."""
    md5 = hashlib.md5()
    with urllib.request.urlopen(url, timeout=30) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or expected_bytes or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                md5.update(chunk)
                bar.update(len(chunk))
    return md5.hexdigest()


def _check_member(member: tarfile.TarInfo, target: Path) -> None:
    """Refuse a member that could land outside ``target``: an absolute path or one with a ``..``
    part, in its name or (links) in what it points to, or anything but a file, folder or link.
    Without ``..`` and absolute paths every name and link resolves downwards from the folder,
    whatever links the archive holds, so no check depends on the order of extraction."""
    def escapes(path: str) -> bool:
        return os.path.isabs(path) or path.startswith(("/", "\\")) or ".." in Path(path.replace("\\", "/")).parts

    if escapes(member.name):
        raise tarfile.TarError(f"refusing to extract {member.name!r}: it could land outside {target}")
    if (member.issym() or member.islnk()) and escapes(member.linkname):
        raise tarfile.TarError(f"refusing to extract the link {member.name!r} -> {member.linkname!r}: "
                               f"it could point outside {target}")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise tarfile.TarError(f"refusing to extract {member.name!r}: not a regular file, folder or link")


def extract_safely(archive, target) -> None:
    """Extract the tar ``archive`` into the folder ``target``, never writing outside it.

    Every member is checked first (``_check_member``) and the archive is refused as a whole
    (``tarfile.TarError``) if one could escape, on every Python version alike. Where Python has
    the "data" filter (3.11.4+) extraction also runs under it (it refuses links that leave the
    folder and drops special permission bits); older interpreters rely on the checks alone.
    """
    target = Path(os.path.realpath(target))
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member, target)
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(target, members=members, **safe)


def download_imagenette(root: str | os.PathLike | None = None, variant: str = "imagenette2-320") -> Path:
    """Download and extract a fast.ai Imagenette archive into ``root``; return the layout folder.

    The archive's MD5 is checked before extraction; extraction goes to a temporary folder inside
    ``root`` that is renamed into place only when complete, so a crash never leaves half a dataset.
    """
    url, md5, nbytes = IMAGENETTE_ARCHIVES[_checks.one_of(variant, "variant", sorted(IMAGENETTE_ARCHIVES))]
    root = Path(root) if root is not None else config.data_root()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{variant}-", dir=root))
    try:
        archive = work / f"{variant}.tgz"
        got = _fetch(url, archive, nbytes)
        if got != md5:
            raise OSError(f"checksum mismatch for {url}: MD5 {got}, expected {md5}")
        extract_safely(archive, work / "x")
        extracted = work / "x" / variant
        if not _is_layout(extracted):
            raise OSError(f"{url} did not contain {variant}/{{train,val}}/<wnid>/ folders")
        target = root / variant
        os.replace(extracted, target)  # atomic on one file system; fails if target is non-empty
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def find_imagenette(root: str | os.PathLike | None = None, download: bool = True,
                    variant: str = "imagenette2-320") -> Path:
    """The Imagenette folder (``<layout>/{train,val}/<wnid>/*``) under ``root`` (default
    ``config.data_root()``, i.e. ``$RANEM_DATA``), trying ``IMAGENETTE_LAYOUTS`` in order; ``root``
    may also be a layout folder itself. If none is found and ``download`` is true, fetches
    ``variant`` from fast.ai. Raises ``FileNotFoundError`` (saying where to put the data) otherwise.
    """
    root = Path(root).expanduser() if root is not None else config.data_root()
    if _is_layout(root):
        return root
    for layout in IMAGENETTE_LAYOUTS:
        if _is_layout(root / layout):
            return root / layout
    url = IMAGENETTE_ARCHIVES.get(variant, (_URL.format(variant),))[0]
    reason = "download=False"
    if download:
        try:
            return download_imagenette(root, variant)
        except (OSError, tarfile.TarError) as err:  # URLError is an OSError: no network lands here
            reason = f"download failed: {err}"
    raise FileNotFoundError(
        f"Imagenette not found under {root} ({reason}). Set RANEM_DATA to the folder that holds it, "
        f"laid out as <root>/imagenette2-320/{{train,val}}/<wnid>/*.JPEG (or imagenette2-224, "
        f"imagenette2-160, imagenette2); download it from {url} and extract it there."
    )


# --------------------------------------------------------------------------------------------
# Imagenette: decoding, Dataset, cached arrays
# --------------------------------------------------------------------------------------------

def _list_files(layout: Path, split: str) -> tuple[list[Path], list[int]]:
    """Image files of one split, sorted by class (IMAGENETTE_WNIDS order) then by name."""
    files, labels = [], []
    for label, wnid in enumerate(IMAGENETTE_WNIDS):
        names = sorted(e.name for e in os.scandir(layout / split / wnid)
                       if e.is_file() and Path(e.name).suffix.lower() in _IMAGE_SUFFIXES)
        files += [layout / split / wnid / name for name in names]
        labels += [label] * len(names)
    return files, labels


def _balanced_subset(labels: Sequence[int], limit: int, seed: int) -> list[int]:
    """Sorted indices of ``limit`` items, ``limit // 10`` per class (the remainder goes to randomly
    chosen classes), drawn with ``seed``; everything when ``limit`` is 0 or not smaller than the set."""
    if limit == 0 or limit >= len(labels):
        return list(range(len(labels)))
    g = torch.Generator().manual_seed(seed)
    k = len(IMAGENETTE_WNIDS)
    quota = [limit // k] * k
    for c in torch.randperm(k, generator=g)[: limit % k].tolist():
        quota[c] += 1
    labels_t = torch.as_tensor(labels)
    chosen = []
    for c in range(k):
        idx = (labels_t == c).nonzero().flatten()
        chosen += idx[torch.randperm(idx.numel(), generator=g)[: quota[c]]].tolist()
    return sorted(chosen)


def _load_rgb(source, size: int) -> np.ndarray:
    """One image (path or PIL image) -> uint8 array (size, size, 3): RGB (greyscale, CMYK and
    palette files converted), resized to size x size without cropping, as the paper's authors do."""
    im = Image.open(source) if not isinstance(source, Image.Image) else source
    try:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))  # decode at a reduced scale (>= size): much faster
        rgb = im.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BILINEAR)  # antialiased when shrinking
        return np.array(rgb, dtype=np.uint8)  # a writable copy, so torch.from_numpy is safe
    finally:
        if im is not source:
            im.close()


def mean_std_for(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation a timm classifier expects (its pretrained config; ImageNet's by default)."""
    import timm.data  # timm imports torchvision: keep it out of ``import ranem.data``

    cfg = timm.data.resolve_data_config({}, model=model)
    return tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"])


def transform_for(model: torch.nn.Module, size: int):
    """A function mapping one image (path or PIL image) to the (3, size, size) float32 tensor
    ``model`` expects: RGB, resized without crop, normalised with the model's mean/std."""
    size = _checks.integer(size, "size")
    mean, std = mean_std_for(model)

    def transform(source) -> torch.Tensor:
        return normalize(torch.from_numpy(_load_rgb(source, size)).permute(2, 0, 1), mean, std)

    return transform


class Imagenette(torch.utils.data.Dataset):
    """Imagenette images as ``(image, label)``: (3, size, size) float32 normalised with
    ``mean``/``std``, label in 0..9 indexing ``IMAGENETTE_CLASSES``. ``limit`` > 0 keeps a
    class-balanced random subset (seeded by ``seed``). Files are ordered by class, then name."""

    def __init__(self, split: str = "train", root=None, size: int = 224,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 limit: int = 0, seed: int = 0, download: bool = True):
        self.split = _checks.one_of(split, "split", _SPLITS)
        self.size = _checks.integer(size, "size")
        limit, seed = _checks.integer(limit, "limit", minimum=0), _checks.integer(seed, "seed", minimum=0)
        self.mean, self.std = tuple(mean), tuple(std)
        normalize(torch.zeros(3, 1, 1), self.mean, self.std)  # validate mean/std now, not per item
        self.root = find_imagenette(root, download=download)
        files, labels = _list_files(self.root, split)
        keep = _balanced_subset(labels, limit, seed)
        self.files = [files[i] for i in keep]
        self.labels = torch.tensor([labels[i] for i in keep], dtype=torch.int64)
        self.classes = IMAGENETTE_CLASSES
        self.imagenet_index = IMAGENETTE_IMAGENET_INDEX

    @classmethod
    def for_model(cls, model: torch.nn.Module, split: str = "train", size: int | None = None, **kwargs):
        """The dataset normalised as ``model`` expects (timm's data config); ``size`` defaults to
        the model's configured input size."""
        mean, std = mean_std_for(model)
        if size is None:
            import timm.data

            size = int(timm.data.resolve_data_config({}, model=model)["input_size"][-1])
        return cls(split, size=size, mean=mean, std=std, **kwargs)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        pixels = torch.from_numpy(_load_rgb(self.files[i], self.size)).permute(2, 0, 1)
        return normalize(pixels, self.mean, self.std), self.labels[i]


def _decode_all(files: Sequence[Path], size: int, workers: int | None) -> torch.Tensor:
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = _load_rgb(files[i], size)

    # Pillow releases the GIL while decoding and resizing, so threads use every core without
    # the start-up and copying costs of processes.
    workers = workers or min(8, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(work, range(len(files))), total=len(files), desc="decoding", leave=False):
            pass
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def imagenette_arrays(split: str, size: int, limit: int = 0, root=None, seed: int = 0,
                      download: bool = True, workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as ``(uint8 (N, 3, size, size), int64 labels (N,))``, in ``Imagenette``'s order.

    Decoded once (a thread pool, JPEG draft mode), then cached as safetensors under
    ``config.cache_dir()/imagenette/``, keyed by layout, split, size, subset and the file list; the
    cache file is written atomically. Normalise with ``normalize(images, mean, std)``.
    """
    from safetensors.torch import load_file, save_file

    split = _checks.one_of(split, "split", _SPLITS)
    size = _checks.integer(size, "size")
    limit, seed = _checks.integer(limit, "limit", minimum=0), _checks.integer(seed, "seed", minimum=0)
    layout = find_imagenette(root, download=download)
    files, labels = _list_files(layout, split)
    keep = _balanced_subset(labels, limit, seed)
    files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    # The file list is part of the key: a changed or partial copy of the data never hits a stale cache.
    digest = hashlib.sha1("\n".join(f"{p.parent.name}/{p.name}" for p in files).encode()).hexdigest()[:12]
    subset = "all" if limit == 0 else f"n{limit}-seed{seed}"
    path = config.cache_dir() / "imagenette" / f"{layout.name}-{split}-{size}px-{subset}-{digest}.safetensors"
    if path.exists():
        tensors = load_file(path)
        return tensors["images"], tensors["labels"]
    images = _decode_all(files, size, workers)
    labels_t = torch.tensor(labels, dtype=torch.int64)
    meta = {"layout": layout.name, "split": split, "size": str(size), "limit": str(limit),
            "seed": str(seed), "count": str(len(files))}
    atomic_write(path, lambda tmp: save_file({"images": images, "labels": labels_t}, str(tmp), metadata=meta))
    return images, labels_t
