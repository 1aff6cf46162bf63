"""Neural explanation masks over tokens: a frozen sequence classifier's hidden states, a small 1-D
convolutional decoder, and the token versions of Ra-NEM and NEMt.

``SequenceEncoder`` reads any classifier that embeds its ids with one ``nn.Embedding``: the hidden
states come from forward hooks on its ``nn.TransformerEncoderLayer`` blocks (any
``nn.TransformerEncoder``-based model) or, failing those, on its ``nn.Conv1d`` layers (a 1-D CNN),
or on the modules named in ``layers``. The same hook on the embedding lets a NEM feed the classifier
embeddings instead of ids: that is how a binary token mask is made differentiable (see
``ranem.tokens.ops``). Training is ``ranem.train.train``, the loop of the image NEMs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ranem import _checks, ops
from ranem.nem import BaseNEM
from ranem.tokens.ops import (TOKEN_SUBSTRATES, Vocab, _check_vocab, check_ids, mix_embeddings, omega_tokens,
                              token_substrate)

__all__ = ["find_token_embedding", "SequenceEncoder", "SequenceDecoder", "TokenNEM", "TokenRaNEM", "TokenNEMt",
           "TOKEN_KINDS"]


def _spread(names: list[str], most: int = 4) -> list[str]:
    """At most ``most`` of ``names`` spread over the depth, the last always included."""
    n, m = len(names), min(most, len(names))
    return [names[i] for i in sorted({round((j + 1) * n / m) - 1 for j in range(m)})]


def _probe_length(classifier: nn.Module) -> int:
    info = getattr(classifier, "ranem_info", None) or {}
    return int(getattr(classifier, "length", None) or info.get("length") or 16)


def _probe(classifier: nn.Module, vocab: Vocab) -> torch.Tensor:
    p = next(classifier.parameters(), None)
    return torch.full((2, _probe_length(classifier)), vocab.first_regular, dtype=torch.long,
                      device=p.device if p is not None else None)


def find_token_embedding(classifier: nn.Module, vocab: Vocab) -> str:
    """The name of the nn.Embedding that the ids go through (not a positional one): the one whose
    input is a probe sequence itself."""
    probe, seen = _probe(classifier, vocab), []
    hooks = [m.register_forward_pre_hook(lambda m, i, n=n: seen.append(n) if i and i[0] is probe else None)
             for n, m in classifier.named_modules() if isinstance(m, nn.Embedding)]
    try:
        with torch.no_grad():
            classifier(probe)
    finally:
        for h in hooks:
            h.remove()
    if len(set(seen)) != 1:
        raise TypeError(f"cannot tell which nn.Embedding embeds the token ids of {type(classifier).__name__} "
                        f"(candidates: {sorted(set(seen))}); pass embedding='<module name>'")
    return seen[0]


class SequenceEncoder(nn.Module):
    """``forward(ids, embeddings=None) -> (logits, [hidden states (B, C, L)])`` from ONE forward of
    the frozen classifier; with ``embeddings`` (B, L, E) the token embedding's output is replaced
    by them (the ids still decide everything else the classifier derives from them, e.g. padding)."""

    def __init__(self, classifier: nn.Module, vocab: Vocab, layers: list[str] | None = None,
                 embedding: str | None = None):
        super().__init__()
        self.classifier = _checks.module(classifier, "classifier").eval().requires_grad_(False)
        self.vocab = vocab
        modules = dict(classifier.named_modules())
        self.embedding_name = embedding if embedding is not None else find_token_embedding(classifier, vocab)
        if not isinstance(modules.get(self.embedding_name), nn.Embedding):
            raise ValueError(f"embedding must name an nn.Embedding of the classifier, got {self.embedding_name!r}")
        if layers is None:
            blocks = [n for n, m in modules.items() if isinstance(m, nn.TransformerEncoderLayer)]
            blocks = blocks or [n for n, m in modules.items() if isinstance(m, nn.Conv1d)]
            if not blocks:
                raise TypeError(f"cannot find hidden states in {type(classifier).__name__}: it has no "
                                "nn.TransformerEncoderLayer or nn.Conv1d; pass layers=[module names]")
            layers = _spread(blocks)
        missing = [n for n in layers if n not in modules]
        if not layers or missing:
            raise ValueError(f"layers must name modules of the classifier; not found: {missing or layers}")
        self.layers = list(layers)
        with torch.no_grad():
            logits, feats = self(self._probe())
        self.channels = [f.shape[1] for f in feats]
        self.classes = logits.shape[1]

    def _probe(self) -> torch.Tensor:
        return _probe(self.classifier, self.vocab)

    @property
    def embedding(self) -> nn.Embedding:
        return dict(self.classifier.named_modules())[self.embedding_name]

    def train(self, mode: bool = True):
        super().train(mode)
        self.classifier.eval()  # frozen: no dropout, whatever the NEM does
        return self

    @staticmethod
    def _as_channels_first(module, out, length: int) -> torch.Tensor:
        out = out[0] if isinstance(out, (tuple, list)) else out
        if getattr(out, "is_nested", False):  # the encoder's fast path packs padded batches
            out = out.to_padded_tensor(0.0)
            if out.shape[1] < length:  # the packing drops trailing padding: restore it (as zeros)
                out = F.pad(out, (0, 0, 0, length - out.shape[1]))
        if not isinstance(out, torch.Tensor) or out.ndim != 3:
            raise TypeError(f"layer {type(module).__name__} does not output (B, L, C) or (B, C, L) hidden states")
        if isinstance(module, nn.TransformerEncoderLayer):
            out = out if module.self_attn.batch_first else out.transpose(0, 1)
            out = out.transpose(1, 2)
        elif out.shape[1] == length and out.shape[2] != length:
            out = out.transpose(1, 2)
        if out.shape[2] != length:  # strided or pooled convolutions: back to one value per token
            out = F.interpolate(out, size=length, mode="linear", align_corners=False)
        return out

    def forward(self, ids: torch.Tensor, embeddings: torch.Tensor | None = None):
        store: dict[str, torch.Tensor] = {}
        modules = dict(self.classifier.named_modules())
        hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, (m, o)))
                 for n in self.layers]
        if embeddings is not None:
            hooks.append(self._replace_embeddings(embeddings))
        try:
            logits = self.classifier(ids)
        finally:
            for h in hooks:
                h.remove()
        return logits, [self._as_channels_first(*store[n], ids.shape[1]) for n in self.layers]

    def _replace_embeddings(self, embeddings: torch.Tensor):
        """A forward hook on the token embedding that returns ``embeddings`` in place of its output."""
        def replace(module, inputs, output):
            if output.shape != embeddings.shape:
                raise ValueError(f"embeddings must be shaped like the token embedding's output "
                                 f"{tuple(output.shape)}, got {tuple(embeddings.shape)}")
            return embeddings.to(output.dtype)
        return self.embedding.register_forward_hook(replace)

    def logits(self, ids: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """The classifier's logits on ``ids`` with its token embeddings replaced by ``embeddings``
        (no hidden states recorded: the masked copies of training need only the logits)."""
        hook = self._replace_embeddings(embeddings)
        try:
            return self.classifier(ids)
        finally:
            hook.remove()


class SequenceDecoder(nn.Module):
    """Hidden states (deepest last) -> one logit per token: a 1x1 projection of each state to
    ``width`` channels, summed, two 3-tap convolution blocks (BN, SiLU, dropout) and a 1x1 head.

    With ``classes`` the head has one output channel per class and the decoder returns the channel
    of the class explained (the classifier's top-1). Why: which tokens matter depends on the class,
    and "this token belongs to the winning class" is a product of the token's identity and the
    class, which one head per class gives directly, where a single head must learn it."""

    def __init__(self, channels: list[int], width: int = 64, dropout: float = 0.1, classes: int = 0):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv1d(c, width, 1) for c in channels)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv1d(width, width, 3, padding=1, bias=False),
                                                    nn.BatchNorm1d(width), nn.SiLU(), nn.Dropout(dropout))
                                      for _ in range(2)])
        self.head = nn.Conv1d(width, max(1, classes), 1)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, feats: list[torch.Tensor], target: torch.Tensor | None = None) -> torch.Tensor:
        x = F.silu(sum(p(f.float()) for p, f in zip(self.project, feats)))
        out = self.head(self.blocks(x))
        if out.shape[1] == 1:
            return out.squeeze(1)
        if target is None:
            raise ValueError("a class-conditioned decoder needs target (the class explained, (B,))")
        return out.gather(1, target.view(-1, 1, 1).expand(-1, 1, out.shape[2])).squeeze(1)


class TokenNEM(BaseNEM):
    """Common network of the token NEMs: a frozen sequence classifier + a trainable 1-D decoder.
    ``vocab`` defaults to the classifier's ``vocab`` attribute (the package's classifiers carry one)."""

    kind = "token_nem"
    default_substrates: tuple[str, ...] = ("mask",)

    def __init__(self, classifier: nn.Module, vocab: Vocab | dict | None = None, *, layers=None,
                 embedding: str | None = None, width: int = 64, dropout: float = 0.1, substrates=None,
                 condition: bool = True):
        super().__init__()
        vocab = getattr(classifier, "vocab", None) if vocab is None else vocab
        if vocab is None:
            raise TypeError("vocab must be given (a ranem.tokens.Vocab) for a classifier without a .vocab")
        self.vocab = _check_vocab(vocab)
        substrates = _checks.names(substrates or self.default_substrates, "substrates", TOKEN_SUBSTRATES)
        _checks.number(dropout, "dropout", low=0, high=1, high_open=True)
        self.encoder = SequenceEncoder(classifier, self.vocab, layers, embedding)
        self.decoder = SequenceDecoder(self.encoder.channels, width, dropout,
                                       self.encoder.classes if condition else 0)
        p = next(classifier.parameters(), None)
        if p is not None:
            self.decoder.to(p.device)
        self.substrates = substrates
        self.config = {"vocab": self.vocab.as_dict(), "layers": self.encoder.layers,
                       "embedding": self.encoder.embedding_name, "width": width, "dropout": dropout,
                       "substrates": list(substrates), "condition": condition}
        self.history: dict = {}

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, attribution logits (B, L)); gradients flow into the decoder only."""
        ids = check_ids(ids, self.vocab)
        with torch.no_grad():
            logits, feats = self.encoder(ids)
        return logits, self.decoder(feats, logits.argmax(1)).float()

    def attribute(self, inputs: torch.Tensor, target=None) -> torch.Tensor:
        """Captum-style: an attribution per token, (B, L)."""
        return self.explain(inputs, target)

    def prepare(self, x, device) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"data must yield token-id tensors or (ids, ...) tuples, got {type(x).__name__}")
        return check_ids(x.to(device), self.vocab, "data")

    @torch.no_grad()
    def validation_faithfulness(self, ids: torch.Tensor, steps: int, amp: bool) -> float:
        from ranem.tokens.curves import token_faithfulness
        steps = min(steps, ids.shape[1])
        return token_faithfulness(self.classifier, ids, self.explain(ids), self.vocab, steps=steps).mean().item()

    def substrate_batch(self, ids: torch.Tensor, mode: str, generator=None):
        """Replacement ids and compaction flags for each row of ``ids`` (the masked copies): one
        substrate drawn per row (mode='input') or for the whole batch (mode='batch')."""
        _checks.one_of(mode, "substrate_mode", ops.SUBSTRATE_MODES)
        count = len(self.substrates)
        which = torch.randint(count, (ids.shape[0] if mode == "input" else 1,), generator=generator)
        which = which.expand(ids.shape[0]).to(ids.device)
        stacked = torch.stack([token_substrate(s, ids, self.vocab, generator) for s in self.substrates])
        r = stacked[which, torch.arange(ids.shape[0], device=ids.device)]
        deleting = torch.tensor([s == "delete" for s in self.substrates], device=ids.device)
        return r, deleting[which]

    def _p(self, ids, embeddings, c) -> torch.Tensor:
        logits = self.encoder.logits(ids, embeddings)
        return logits.float().softmax(1).gather(1, c[:, None]).squeeze(1)


class TokenRaNEM(TokenNEM):
    """Ra-NEM over tokens: the loss 1 - p_c of the sequence with only the top-k tokens of a + g kept
    (binary masks, the substrates' symbols elsewhere), stratified k, S copies per sequence in one batch."""

    kind = "token_ranem"
    default_samples = 6
    default_substrates = ("mask", "random", "delete")

    def loss(self, ids, generator=None, samples=6, substrate_mode="input"):
        logits, a = self(ids)
        b, length = ids.shape
        s = int(samples)
        c = logits.argmax(1).repeat_interleave(s)
        k = ops.sample_k(length, s, stratified=True, generator=generator, batch=b).reshape(-1).to(ids.device)
        rows = ids.repeat_interleave(s, 0)
        r, compact = self.substrate_batch(rows, substrate_mode, generator)
        masked, r, mask, order = omega_tokens(rows, a.repeat_interleave(s, 0), k, r, self.vocab,
                                              generator=generator, compact=compact)
        emb = self.encoder.embedding
        p = self._p(masked, mix_embeddings(emb(rows), emb(r), mask, order), c)
        return (1 - p).mean(), {"p_masked": p.mean().item(), "mask_mean": mask.float().mean().item()}


class TokenNEMt(TokenNEM):
    """NEMt over tokens: a continuous mask m = sigmoid(a) mixes each token's embedding with the
    substrate's, E(x) m + E(r)(1 - m); loss (1 - p_c) + area_weight * mean(m). The mixtures are
    not embeddings of any sequence: this is the partial occlusion that Ra-NEM does without."""

    kind = "token_nemt"

    def __init__(self, classifier, vocab=None, area_weight: float = 0.02, **kwargs):
        _checks.number(area_weight, "area_weight", low=0)
        if "delete" in (kwargs.get("substrates") or ()):
            raise ValueError("substrates of TokenNEMt cannot include 'delete': half a deletion is undefined")
        super().__init__(classifier, vocab, **kwargs)
        self.area_weight = float(area_weight)
        self.config["area_weight"] = self.area_weight

    def loss(self, ids, generator=None, samples=1, substrate_mode="input"):
        logits, a = self(ids)
        c = logits.argmax(1)
        m = torch.sigmoid(a)
        r, _ = self.substrate_batch(ids, substrate_mode, generator)
        emb = self.encoder.embedding
        p = self._p(ids, mix_embeddings(emb(ids), emb(r), m), c)
        area = m.mean()
        return (1 - p).mean() + self.area_weight * area, {"p_masked": p.mean().item(), "mask_mean": area.item()}


TOKEN_KINDS = {"token_ranem": TokenRaNEM, "token_nemt": TokenNEMt}
