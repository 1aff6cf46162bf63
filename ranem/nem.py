"""Neural explanation masks: a frozen classifier as encoder, a small U-Net decoder, Ra-NEM and NEMt.

One forward of the frozen classifier yields both its logits and the feature maps the decoder reads,
so an explanation costs the prediction plus a light decoder. ``RaNEM`` trains the decoder through
the Gumbel-top-k operator (binary masks, straight-through); ``NEMt`` through a continuous sigmoid mask
with an area penalty. Training itself lives in ``ranem.train``.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from ranem import _checks, ops
from ranem.baselines._common import check_maps, model_input
from ranem.data.transforms import model_statistics, normalise_uint8
from ranem.cache import CacheError, atomic_write, classifier_fingerprint, content_sha256, read_safetensors

__all__ = ["FrozenEncoder", "Decoder", "BaseNEM", "NEM", "RaNEM", "RaNEMInsDel", "NEMt", "KINDS",
           "classifier_fingerprint", "substrate_batch", "masked_copies", "class_probability"]
FORMAT = "ranem-nem/2"
# Files of format 1 predate the decoder's options: their decoders upsample with transposed convs
# to full resolution, which is what these values rebuild.
_FORMAT_1_DECODER = {"upsample": "transposed", "output_stride": 1}
MAX_OUTPUT_STRIDE = 32
# The decoder's design (see NEM): chosen with benchmarks/decoder.py (explanation cost against the
# classifier's forward) and benchmarks/decoder_faithfulness.py (chapter 8's protocol).
DEFAULT_UPSAMPLE, DEFAULT_OUTPUT_STRIDE, DEFAULT_DECODER_CHANNELS = "bilinear", 4, (128, 64, 32, 16, 8)
MAX_DECODER_WIDTH = 2048  # 8x the default's widest block: anything larger is a typo or a crafted file


# ----------------------------------------------------------------------------- encoder
def _pick_features(feature_info: list[dict]) -> list[int]:
    """Which of a timm model's feature levels feed the decoder: the deepest map of each stride for
    CNNs; for ViTs (every block at one stride) four blocks spread over the depth."""
    strides = [int(f["reduction"]) for f in feature_info]
    if len(set(strides)) == 1:
        n = len(strides)
        return sorted({max(0, round((i + 1) * n / 4) - 1) for i in range(min(4, n))})
    last = {s: i for i, s in enumerate(strides)}
    return sorted(last.values())


def _image_size(model: nn.Module) -> tuple[int, int]:
    info = getattr(model, "ranem_info", None) or {}
    if info.get("image_size"):
        s = info["image_size"]
        return (s, s) if isinstance(s, int) else tuple(s)
    patch = getattr(model, "patch_embed", None)
    if patch is not None and getattr(patch, "img_size", None):
        return tuple(patch.img_size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224))[1:])


class FrozenEncoder(nn.Module):
    """Wraps a frozen classifier: ``forward(x) -> (logits, [feature maps, deepest first])`` from ONE
    forward pass. Uses timm's ``forward_intermediates`` + ``forward_head`` when present (ViT token
    grids come back as NCHW with prefix tokens dropped); otherwise forward hooks on ``layers`` (module
    names) or on the modules listed in the model's ``feature_info``."""

    def __init__(self, classifier: nn.Module, layers: list[str] | None = None):
        super().__init__()
        self.classifier = _checks.module(classifier, "classifier").eval().requires_grad_(False)
        info = getattr(classifier, "feature_info", None)
        info = list(info) if info is not None and not callable(info) else None
        if layers is not None:
            names = dict(classifier.named_modules())
            missing = [n for n in layers if n not in names]
            if not layers or missing:
                raise ValueError(f"layers must name modules of the classifier; not found: {missing or layers}")
            self.mode, self.layers = "hooks", list(layers)
        elif hasattr(classifier, "forward_intermediates") and hasattr(classifier, "forward_head") and info:
            self.mode, self.indices = "intermediates", _pick_features(info)
        elif info and all("module" in f for f in info):
            self.mode = "hooks"
            self.layers = [info[i]["module"] for i in _pick_features(info)]
        else:
            raise TypeError(
                f"cannot read feature maps from {type(classifier).__name__}: it is not a timm model with "
                "forward_intermediates/feature_info; pass layers=[names of modules whose outputs are "
                "(B, C, h, w) feature maps]")
        first_conv = next((m for m in classifier.modules() if isinstance(m, nn.Conv2d)), None)
        self.in_chans = first_conv.in_channels if first_conv is not None else 3
        self.image_size = _image_size(classifier)
        with torch.no_grad():
            p = next(classifier.parameters(), None)
            probe = torch.zeros(1, self.in_chans, *self.image_size,
                                device=p.device if p is not None else None)
            _, feats = self(probe)
        self.channels = [f.shape[1] for f in feats]
        if self.mode == "intermediates":  # timm's nominal reductions: exact whatever the probe size
            self.strides = [float(info[i]["reduction"]) for i in self.indices][::-1]
        else:
            self.strides = [self.image_size[0] / f.shape[-2] for f in feats]

    def train(self, mode: bool = True):
        # The classifier stays in eval mode whatever the NEM does: no BN statistics, no dropout.
        super().train(mode)
        self.classifier.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.mode == "intermediates":
            final, feats = self.classifier.forward_intermediates(x, indices=self.indices)
            return self.classifier.forward_head(final), feats[::-1]
        store: dict[str, torch.Tensor] = {}
        modules = dict(self.classifier.named_modules())
        hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, o))
                 for n in self.layers]
        try:
            logits = self.classifier(x)
        finally:
            for h in hooks:
                h.remove()
        feats = [store[n] for n in self.layers]
        bad = [n for n, f in zip(self.layers, feats) if not (isinstance(f, torch.Tensor) and f.ndim == 4)]
        if bad:
            raise TypeError(f"layers {bad} do not output (B, C, h, w) feature maps; choose other layers")
        order = sorted(range(len(feats)), key=lambda i: (feats[i].shape[-2] * feats[i].shape[-1], -i))
        return logits, [feats[i] for i in order]  # deepest (smallest, then latest) first


# ----------------------------------------------------------------------------- decoder
def _sep_conv(cin: int, cout: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1, then BN + SiLU: a 3x3 conv at a fraction of the cost."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


UPSAMPLING = ("bilinear", "transposed")


def _project(cin: int, cout: int) -> nn.Sequential:
    """Pointwise 1x1 projection to ``cout`` channels, BN + SiLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class _BilinearUp(nn.Module):
    """x2 upsampling: project to ``cout`` at the low resolution (4x fewer pixels to convolve), then
    bilinear interpolation. Unlike a stride-2 transposed conv it cannot leave a checkerboard."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.project = _project(cin, cout)

    def forward(self, x):
        return F.interpolate(self.project(x), scale_factor=2, mode="bilinear", align_corners=False)


def _transposed_up(cin: int, cout: int) -> nn.Sequential:
    """x2 upsampling: depthwise 4x4 stride-2 transposed conv, then a 1x1 projection (BN + SiLU).
    The first decoder design; kept for checkpoints that use it and for the decoder benchmark."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cin, 4, stride=2, padding=1, groups=cin, bias=False),
                         _project(cin, cout))


class DecoderBlock(nn.Module):
    """Upsample x2 (``upsample`` = "bilinear" or "transposed") or only project the deeper map (None),
    concatenate the skip, two separable 3x3 convs with spatial dropout between them."""

    def __init__(self, cin: int, cskip: int, cout: int, upsample: str | None, dropout: float):
        super().__init__()
        if upsample is None:
            self.up = _project(cin, cout)
        else:
            self.up = _BilinearUp(cin, cout) if upsample == "bilinear" else _transposed_up(cin, cout)
        self.conv1, self.conv2 = _sep_conv(cout + cskip, cout), _sep_conv(cout, cout)
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x, skip=None):
        x = self.up(x)
        if skip is not None:
            if skip.shape[-2:] != x.shape[-2:]:  # ViT grids (one stride) or odd sizes
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.drop(self.conv1(x)))


def _widths(decoder_channels, n: int, output_stride: int) -> list[int]:
    """Block widths by output stride: ``decoder_channels[-1]`` is the width at stride 1, the entry
    before it at stride 2, and so on; a decoder stopping at ``output_stride`` 2**m drops the last m.
    Missing entries at the deep end repeat the widest."""
    dc = list(decoder_channels)[:len(decoder_channels) - int(math.log2(output_stride))] or [decoder_channels[0]]
    return dc[-n:] if n <= len(dc) else [dc[0]] * (n - len(dc)) + dc


class Decoder(nn.Module):
    """U-Net decoder over any list of feature maps (deepest first).

    The maps at the deepest stride are concatenated into the head (one map for a CNN, several
    blocks' token grids for a ViT); every other map at a stride >= ``output_stride`` is a skip,
    fused in order. One block per x2 step from the head's stride down to ``output_stride`` (plus
    blocks without upsampling if there are more skips than steps); block widths follow the output
    stride (``_widths``). Then a 1x1 conv to one channel and a learnable affine 'patching' layer,
    and the one-channel logits are resized bilinearly to the input (a linear map commutes with the
    interpolation, so this is the same function as resizing the features first, at 1/C the cost).
    Output: (B, H, W) logits."""

    def __init__(self, channels, strides, decoder_channels=DEFAULT_DECODER_CHANNELS, dropout=0.2,
                 upsample: str = DEFAULT_UPSAMPLE, output_stride: int = DEFAULT_OUTPUT_STRIDE):
        super().__init__()
        self.n_head = sum(1 for s in strides if abs(s - strides[0]) < 1e-6)
        # Skips come deepest first: the ones at a stride >= output_stride are the first n_skips.
        skips = [c for c, s in zip(channels[self.n_head:], strides[self.n_head:]) if s >= output_stride - 1e-6]
        self.n_skips = len(skips)
        ups = max(0, math.ceil(math.log2(max(strides[0] / output_stride, 1)) - 1e-9))
        n = max(ups, len(skips), 1)
        outs = _widths(decoder_channels, n, output_stride)
        cins = [sum(channels[:self.n_head])] + outs[:-1]
        skips += [0] * (n - len(skips))
        self.blocks = nn.ModuleList(DecoderBlock(ci, cs, co, upsample if i < ups else None, dropout)
                                    for i, (ci, cs, co) in enumerate(zip(cins, skips, outs)))
        self.head = nn.Conv2d(outs[-1], 1, 1)
        self.patch = nn.Conv2d(1, 1, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, feats: list[torch.Tensor], size) -> torch.Tensor:
        x = torch.cat(feats[:self.n_head], 1) if self.n_head > 1 else feats[0]
        skips = feats[self.n_head:self.n_head + self.n_skips]
        with _one_thread_for_one_image(x):
            for i, block in enumerate(self.blocks):
                x = block(x, skips[i] if i < len(skips) else None)
            x = self.patch(self.head(x))
            if tuple(x.shape[-2:]) != tuple(size):
                x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return x.squeeze(1)


@contextlib.contextmanager
def _one_thread_for_one_image(x: torch.Tensor):
    """On the CPU, a single image's decoder runs on one thread. Its ~40 operations are so small that
    waking a second thread for each costs more than it saves: measured on 2 cores (Lite0, 144 px, with
    OMP_WAIT_POLICY=PASSIVE as ``make`` sets it) 4.1 ms on two threads against 1.3 ms on one; with
    spinning threads the two are equal. From two images on, the threads pay for themselves."""
    threads = torch.get_num_threads()
    if x.shape[0] != 1 or x.device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- NEMs
@contextlib.contextmanager
def _eval(module: nn.Module):
    """``module`` and every submodule in eval mode inside the block, restored after. Sets the flags
    directly: ``module.eval()`` and back walks the tree through every ``train`` override twice
    (about 3 ms for a Lite0 NEM's 330 modules, a sixth of its batch-1 forward)."""
    training = [m for m in module.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


def _check_output_stride(value) -> int:
    stride = _checks.integer(value, "output_stride")
    if stride > MAX_OUTPUT_STRIDE or stride & (stride - 1):
        raise ValueError(f"output_stride must be a power of two in [1, {MAX_OUTPUT_STRIDE}], got {value!r}")
    return stride


def _check_decoder_channels(widths) -> tuple[int, ...]:
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__") or not 1 <= len(widths) <= 8:
        raise ValueError(f"decoder_channels must be a sequence of 1 to 8 block widths, got {widths!r}")
    if not all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_DECODER_WIDTH for w in widths):
        raise ValueError(f"decoder_channels must hold ints in [1, {MAX_DECODER_WIDTH}], got {list(widths)}")
    return tuple(widths)


class BaseNEM(nn.Module):
    """What every NEM shares, whatever its input (images here, token sequences in ``ranem.tokens``):
    a frozen classifier read by ``self.encoder`` (its ``classifier`` attribute), a trainable
    ``self.decoder``, ``self.config`` (JSON-able constructor options), explanation, training through
    ``ranem.train.train`` and safetensors persistence. Subclasses define ``forward(x) -> (logits,
    attribution logits)``, ``loss(x, generator, samples, substrate_mode)``, ``prepare(x, device)``
    (a batch from the data, checked, on the device) and ``validation_faithfulness(x, steps, amp)``."""

    kind = "nem"
    default_samples = 1
    channels_last = False  # whether the training loop may switch to channels-last on CUDA

    @property
    def classifier(self) -> nn.Module:
        return self.encoder.classifier

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's logits and the attribution, from one forward (eval mode, no noise)."""
        if isinstance(x, torch.Tensor):
            _checks.finite(x, "x")
        with _eval(self):
            return self(x)

    def explain(self, x: torch.Tensor, target=None) -> torch.Tensor:
        """Attribution, higher = more important, for the classifier's top-1 class."""
        logits, a = self.predict(x)
        self._check_target(target, logits)
        return a

    @staticmethod
    def _check_target(target, logits) -> None:
        if target is None:
            return
        from ranem.baselines._common import resolve_target  # its type and shape checks; lazy: no captum here
        # Given a target, resolve_target reads only the batch size and device of its x: logits serve.
        t, top = resolve_target(None, logits, target), logits.argmax(1)
        wrong = (t != top).nonzero().flatten()[:5].tolist()
        if wrong:
            raise ValueError(
                f"target must be None or the classifier's top-1 class of every image: a NEM explains the class "
                f"its decoder was trained for; images {wrong} have top-1 {top[wrong].tolist()} but target "
                f"{t[wrong].tolist()}")

    def fit(self, data, epochs: int | None = None, samples: int | None = None, **kwargs) -> dict:
        """Train the decoder on ``data`` (Dataset, DataLoader or tensor of inputs or (input, label));
        see ``ranem.train.train`` for the options. Returns the history."""
        from ranem.train import train
        return train(self, data, epochs=epochs, samples=samples, **kwargs)

    def loss(self, x, generator=None, samples=None, substrate_mode="input"):  # pragma: no cover
        raise NotImplementedError

    def prepare(self, x, device) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def validation_faithfulness(self, x, steps: int, amp: bool) -> float:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Weights as safetensors (with the config, the classifier fingerprint and the history in its
        header) plus a readable JSON twin; both written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"decoder.{k}": v.detach().cpu().contiguous() for k, v in self.decoder.state_dict().items()}
        history = {k: v for k, v in self.history.items() if not isinstance(v, torch.Tensor)}
        tensors.update({f"history.{k}": v.detach().cpu().contiguous()
                        for k, v in self.history.items() if isinstance(v, torch.Tensor)})
        meta = {"format": FORMAT, "kind": self.kind, "config": self.config,
                "fingerprint": classifier_fingerprint(self.classifier), "history": history}
        meta["sha256"] = content_sha256(tensors, meta)  # checked by load: one flipped bit is refused
        text = json.dumps(meta)
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"ranem": text}))
        atomic_write(path.with_suffix(".json"), lambda p: p.write_text(json.dumps(meta, indent=1)))
        return path

    @classmethod
    def load(cls, path, classifier: nn.Module, check: bool = True) -> "BaseNEM":
        """A NEM saved by ``save``, attached to ``classifier``. Refuses (ValueError) a checkpoint
        trained for another classifier unless ``check=False`` (e.g. randomisation tests)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no NEM checkpoint at {path}")
        meta, tensors = _read_nem_file(path)
        # A subclass loads its own kind (token NEMs live outside KINDS); NEM/BaseNEM look it up.
        target = cls if cls.kind == meta["kind"] else KINDS.get(meta["kind"])
        if target is None:
            raise CacheError(f"{path} holds a {meta['kind']!r} NEM; known kinds are {sorted(KINDS)} "
                             "(a token NEM loads with its own class's load)")
        if cls not in (NEM, BaseNEM) and cls is not target:
            raise ValueError(f"{path} holds a {meta['kind']} NEM, not a {cls.kind}; use {target.__name__}.load")
        if check:
            mine, theirs = classifier_fingerprint(classifier), meta["fingerprint"]
            if mine != theirs:
                raise ValueError(
                    f"{path} was trained for classifier {theirs['name']} (weights sha256 "
                    f"{theirs['sha256'][:12]}), but the classifier given is {mine['name']} (sha256 "
                    f"{mine['sha256'][:12]}); a NEM only explains the classifier it was trained for")
        try:
            nem = target(classifier, **meta["config"])
        except (TypeError, ValueError) as err:
            raise CacheError(f"{path} holds an invalid {meta['kind']} config {meta['config']!r}: {err}") from err
        dev = next(nem.decoder.parameters()).device
        nem.decoder.load_state_dict({k[8:]: v.to(dev) for k, v in tensors.items() if k.startswith("decoder.")})
        nem.history = dict(meta.get("history", {}))
        nem.history.update({k[8:]: v for k, v in tensors.items() if k.startswith("history.")})
        return nem


class NEM(BaseNEM):
    """Common network of Ra-NEM and NEMt on images: frozen classifier (encoder) + trainable U-Net
    decoder. Subclasses define ``loss(x, generator, samples, substrate_mode)``.

    The decoder's design: ``upsample`` ("bilinear": project at the low resolution, then interpolate;
    "transposed": depthwise stride-2 transposed convs, the first design, which leaves a
    checkerboard), ``output_stride`` (a power of two: the decoder stops there and its one-channel
    logits are resized to the input) and ``decoder_channels`` (block widths by output stride, the
    last at stride 1). The defaults (bilinear, 4, 128..8) cost 1.2-1.3x the classifier's forward
    on the cpu-mode EfficientNet-Lite0 and ViT, against 1.6-2.5x for the first design (transposed,
    1, 256..16), whose faithfulness they matched within one standard error.
    """

    kind = "nem"
    default_samples = 1
    channels_last = True
    default_substrates: tuple[str, ...] = ("zeros", "blur", "noise")

    def __init__(self, classifier: nn.Module, *, layers=None, decoder_channels=DEFAULT_DECODER_CHANNELS,
                 dropout: float = 0.2, substrates=None, upsample: str = DEFAULT_UPSAMPLE, output_stride: int = DEFAULT_OUTPUT_STRIDE):
        super().__init__()
        substrates = _checks.names(substrates or self.default_substrates, "substrates", ops.SUBSTRATES)
        _checks.number(dropout, "dropout", low=0, high=1, high_open=True)
        decoder_channels = _check_decoder_channels(decoder_channels)
        _checks.one_of(upsample, "upsample", UPSAMPLING)
        output_stride = _check_output_stride(output_stride)
        if layers is not None and (isinstance(layers, str) or not all(isinstance(n, str) for n in layers)):
            raise TypeError(f"layers must be None or a list of module names (str), got {layers!r}")
        self.encoder = FrozenEncoder(classifier, layers)
        self.decoder = Decoder(self.encoder.channels, self.encoder.strides, tuple(decoder_channels), dropout,
                               upsample, output_stride)
        p = next(classifier.parameters(), None)
        if p is not None:
            self.decoder.to(p.device)
        self.mean, self.std = model_statistics(classifier)  # the rule every explainer's uint8 input follows
        self.substrates = substrates
        self.config = {"layers": layers, "decoder_channels": list(decoder_channels), "dropout": dropout,
                       "substrates": list(substrates), "upsample": upsample, "output_stride": output_stride}
        self.history: dict = {}

    def check_input(self, x) -> None:
        _checks.tensor(x, "x")
        if x.ndim != 4 or x.shape[1] != self.encoder.in_chans:
            raise ValueError(f"x must be (B, {self.encoder.in_chans}, H, W) normalised images, "
                             f"got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a float tensor (normalised images), got {x.dtype}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, attribution logits (B, H, W)); gradients flow into the decoder only."""
        self.check_input(x)
        with torch.no_grad():
            logits, feats = self.encoder(x)
        return logits, self.decoder(feats, x.shape[-2:]).float()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's logits and the attribution, from one forward (eval mode, no noise).
        x is checked like every explainer's input and cast to the classifier's dtype (the package's
        dtype rule, ``ranem.baselines._common.model_input``)."""
        self.check_input(x)  # the NEM's own message first: it names the channels the encoder takes
        x = model_input(self.classifier, x)
        with _eval(self):
            return self(x)

    def explain(self, x: torch.Tensor, target=None, batch_size: int | None = None) -> torch.Tensor:
        """Attribution (B, H, W), higher = more important, for the classifier's top-1 class.

        x: normalised float images, or uint8 images, normalised here with the classifier's
        mean/std as ``fit`` does. target: None or the top-1 class of every image; any other class
        is refused (ValueError), since the decoder was trained for the top-1. batch_size: images
        per forward (None: all at once); the maps do not depend on it."""
        x = normalise_uint8(x, self.mean, self.std)
        logits, a = self._predict_in_chunks(x, batch_size)
        self._check_target(target, logits)
        return check_maps(a, x, f"{type(self).__name__}.explain")

    def _predict_in_chunks(self, x, batch_size):
        """``predict`` on chunks of at most ``batch_size`` images (None: one call), concatenated."""
        if batch_size is not None:
            _checks.integer(batch_size, "batch_size")
        if batch_size is None or not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] <= batch_size:
            return self.predict(x)  # its checks say what is wrong with an x that is not a batch
        parts = [self.predict(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def attribute(self, inputs: torch.Tensor, target=None) -> torch.Tensor:
        """Captum-style: attribution shaped like ``inputs`` (each pixel's value on every channel).
        ``target`` as in ``explain``; ``ranem.interop.NEMAttribution`` is the full Captum class."""
        return self.explain(inputs, target).unsqueeze(1).expand(inputs.shape)

    def prepare(self, x, device) -> torch.Tensor:
        """A batch of images on ``device``, normalised: uint8 images are scaled and normalised with
        the classifier's mean/std; float images are taken as normalised."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"data must yield image tensors or (image, ...) tuples, got {type(x).__name__}")
        x = normalise_uint8(x.to(device, non_blocking=True), self.mean, self.std)
        self.check_input(x)
        _checks.finite(x, "data")  # else the decoder's weights silently become NaN
        return x

    @torch.no_grad()
    def validation_faithfulness(self, x: torch.Tensor, steps: int, amp: bool) -> float:
        """Mean faithfulness (insertion AUC - deletion AUC, ``steps`` steps) of the NEM's maps on x."""
        from ranem.metrics import faithfulness
        scores = [faithfulness(self.classifier, xb, self.explain(xb), steps=steps, autocast=amp).float().cpu()
                  for xb in x.split(64)]
        return torch.cat(scores).mean().item()

    def substrate_batch(self, x: torch.Tensor, n: int, mode: str, generator=None) -> torch.Tensor:
        """Replacement values for ``n`` copies of each image (image-major), one substrate drawn per
        masked input (mode='input', as the paper says) or per batch (mode='batch', the authors' code):
        ``substrate_batch`` over this NEM's substrates."""
        return substrate_batch(x, n, self.substrates, mode, generator)


def _read_nem_file(path: Path) -> tuple[dict, dict]:
    """(metadata, tensors) of a file written by ``NEM.save``, its integrity and format checked."""
    rebuild = "delete it and train the NEM again (for the book's NEMs, ranem.zoo.get_nem does that)"
    tensors, header = read_safetensors(path, rebuild)
    try:
        meta = json.loads(header.get("ranem", "{}"))
    except json.JSONDecodeError as err:
        raise CacheError(f"{path} has an unreadable ranem header ({err}); {rebuild}") from err
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, "ranem-nem/1"):
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path} is not a ranem NEM checkpoint (format {found!r})")
    digest = meta.pop("sha256", None)  # absent in files saved before digests were recorded
    if digest is not None and content_sha256(tensors, meta) != digest:
        raise CacheError(f"{path}: its content does not match the SHA-256 recorded when it was saved (a changed "
                         f"or corrupted file); {rebuild}")
    if not isinstance(meta.get("kind"), str) or not isinstance(meta.get("config"), dict):
        raise CacheError(f"{path} names NEM kind {meta.get('kind')!r} with config {meta.get('config')!r}; "
                         f"known kinds are {sorted(KINDS)}")
    if meta["format"] == "ranem-nem/1" and meta["kind"] in KINDS:
        meta["config"] = {**_FORMAT_1_DECODER, **meta["config"]}
    return meta, tensors


# ----------------------------------------------------------------------------- Ra-NEM's objective
# The pieces of Ra-NEM's loss that do not depend on where the attribution comes from: RaNEM.loss
# feeds them the decoder's output, ranem.optimise.optimise_attribution a free tensor per image.
def substrate_batch(x: torch.Tensor, n: int, substrates, mode: str = "input", generator=None) -> torch.Tensor:
    """Replacement values R for ``n`` copies of each image of x (image-major, (B * n, C, H, W)).

    ``substrates``: names in ``ops.SUBSTRATES``. mode='input' draws one substrate per masked copy
    (as the paper says); mode='batch' one for the whole batch (as the authors' code does). The
    draw of which substrate comes first, then the noise substrate's own draw (on x's device: a
    generator elsewhere falls back to the global RNG)."""
    _checks.one_of(mode, "substrate_mode", ops.SUBSTRATE_MODES)
    count = len(substrates)
    draws = (x.shape[0] * n,) if mode == "input" else (1,)
    which = torch.randint(count, draws, generator=generator).to(x.device)
    gen = generator if generator is None or generator.device == x.device else None
    if mode == "batch" or count == 1:
        r = ops.get_substrate(substrates[int(which[0]) if count > 1 else 0])(x, generator=gen)
        return r.repeat_interleave(n, 0)
    stacked = torch.stack([ops.get_substrate(s)(x, generator=gen) for s in substrates])
    image = torch.arange(x.shape[0], device=x.device).repeat_interleave(n)
    return stacked[which, image]


def masked_copies(x: torch.Tensor, scores: torch.Tensor, n: int, substrates, substrate_mode: str = "input",
                  generator=None, stratified: bool = True):
    """The masked inputs of Ra-NEM's loss: ``n`` copies of each image (image-major) in which copy
    j of image b keeps the top-``k_bj`` pixels of ``scores_b + g`` (Gumbel noise g, ``ops.omega``)
    and shows a substrate elsewhere.

    x: images (B, C, H, W); scores: attribution logits (B, H, W), differentiable. The k of each
    image are ``ops.sample_k(H * W, n, stratified)`` (one per bin of 1..d when stratified), the
    substrates come from ``substrate_batch``. Random draws in this order: k, substrates, Gumbel
    noise. Returns ``(kept, xr, r, mask)``: the masked copies, the repeated clean images, the
    substrates and the binary masks (B * n, H, W) with their straight-through gradient."""
    b, (h, w) = x.shape[0], x.shape[-2:]
    k = ops.sample_k(h * w, n, stratified=stratified, generator=generator, batch=b).reshape(-1).to(x.device)
    xr = x.repeat_interleave(n, 0)
    r = substrate_batch(x, n, substrates, substrate_mode, generator)
    kept, mask = ops.omega(xr, scores.repeat_interleave(n, 0), k, r, generator=generator)
    return kept, xr, r, mask


def class_probability(classifier: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """p_c: the classifier's softmax probability (float32) of ``classes[i]`` for ``images[i]``."""
    return classifier(images).float().softmax(1).gather(1, classes[:, None]).squeeze(1)


class RaNEM(NEM):
    """Ranking NEM: trained on 1 - p_c(omega(x, top_k(a + g))) with binary Gumbel-top-k masks,
    stratified k, S samples per image pushed through the classifier as one batch."""

    kind = "ranem"
    default_samples = 6

    def _draw_masks(self, x, draws, substrate_mode, generator):
        """``draws`` masked copies per image (image-major): the clean top-1 class of each copy, the
        copies x_M with the top-k of a + g kept and the rest replaced, the substrates R and the masks M."""
        logits, a = self(x)
        c = logits.argmax(1).repeat_interleave(draws)
        kept, xr, r, mask = masked_copies(x, a, draws, self.substrates, substrate_mode, generator)
        return c, kept, xr, r, mask

    def _p(self, images, c):
        return class_probability(self.classifier, images, c)

    def loss(self, x, generator=None, samples=6, substrate_mode="input"):
        c, kept, _, _, mask = self._draw_masks(x, int(samples), substrate_mode, generator)
        p = self._p(kept, c)
        return (1 - p).mean(), {"p_masked": p.mean().item(), "mask_mean": mask.float().mean().item()}


class RaNEMInsDel(RaNEM):
    """Our extension, not the paper's method: Ra-NEM trained on both halves of the evaluation.

    Each Gumbel-top-k draw yields two inputs: the top-k pixels kept (the insertion side, as in
    Ra-NEM) and the top-k pixels removed, i.e. the mask's complement (the deletion side). The loss
    is the mean of (1 - p_c(keep)) and p_c(remove). ``samples`` counts classifier inputs per image,
    as for Ra-NEM, so both cost the same forwards per step: ``samples // 2`` draws, two inputs each.
    """

    kind = "ranem_insdel"

    def loss(self, x, generator=None, samples=6, substrate_mode="input"):
        if int(samples) < 2:
            raise ValueError(f"samples must be >= 2 for {type(self).__name__} (a keep and a remove input "
                             f"per draw), got {samples}")
        draws = int(samples) // 2
        c, kept, xr, r, mask = self._draw_masks(x, draws, substrate_mode, generator)
        m = mask[:, None].to(xr.dtype)
        removed = xr * (1 - m) + r * m  # the same draw's complement: its top-k pixels replaced
        p = self._p(torch.cat([kept, removed]), c.repeat(2))
        p_keep, p_remove = p[:c.numel()], p[c.numel():]
        loss = 0.5 * ((1 - p_keep).mean() + p_remove.mean())
        return loss, {"p_masked": p_keep.mean().item(), "p_removed": p_remove.mean().item(),
                      "mask_mean": mask.float().mean().item()}


class NEMt(NEM):
    """NEMt (Moller et al. 2025): continuous mask m = sigmoid(a) on x*m + R*(1-m); loss
    (1 - p_c) + area_weight * mean(m). A set-of-features method: area_weight sets the trade-off."""

    kind = "nemt"
    default_substrates = ("zeros",)

    def __init__(self, classifier, area_weight: float = 0.02, **kwargs):
        _checks.number(area_weight, "area_weight", low=0)
        super().__init__(classifier, **kwargs)
        self.area_weight = float(area_weight)
        self.config["area_weight"] = self.area_weight

    def loss(self, x, generator=None, samples=1, substrate_mode="input"):
        logits, a = self(x)
        c = logits.argmax(1)
        m = torch.sigmoid(a)[:, None]
        r = self.substrate_batch(x, 1, substrate_mode, generator)
        p = self.classifier(x * m + r * (1 - m)).float().softmax(1).gather(1, c[:, None]).squeeze(1)
        area = m.mean()
        return (1 - p).mean() + self.area_weight * area, {"p_masked": p.mean().item(), "mask_mean": area.item()}


KINDS = {"ranem": RaNEM, "nemt": NEMt, "ranem_insdel": RaNEMInsDel}  # NEM.kind -> class
