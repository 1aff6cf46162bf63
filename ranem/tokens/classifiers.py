"""Small sequence classifiers to explain: a transformer encoder and a 1-D CNN, and their training.

Both map (B, L) token ids to (B, classes) logits, embed tokens with one ``nn.Embedding`` (which the
NEM and the gradient baselines hook) and treat padding as absent: the transformer masks it out of
attention and of its mean pooling, the CNN out of its max pooling. A sequence that is all padding
(everything deleted) still gets finite logits.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ranem import _checks
from ranem.tokens.ops import Vocab, _check_vocab, check_ids

__all__ = ["TransformerClassifier", "CNNClassifier", "train_classifier", "accuracy"]


def _padding(ids: torch.Tensor, vocab: Vocab) -> torch.Tensor:
    """(B, L) True at padding; a row that is all padding keeps its first position, so attention and
    pooling always have something to read (an all-masked softmax is NaN)."""
    pad = ids == vocab.pad_id
    pad[:, 0] &= ~pad.all(1)
    return pad


class TransformerClassifier(nn.Module):
    """Token + learned position embeddings, a pre-norm ``nn.TransformerEncoder``, masked mean
    pooling, a linear head."""

    def __init__(self, vocab: Vocab, classes: int, length: int, dim: int = 64, heads: int = 4,
                 layers: int = 2, ff: int = 128, dropout: float = 0.1):
        super().__init__()
        self.vocab = _check_vocab(vocab)
        self.length = length
        self.embed = nn.Embedding(self.vocab.size, dim)
        self.position = nn.Parameter(torch.randn(length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.ranem_info = {"name": f"transformer-{layers}x{dim}", "classes": classes, "length": length}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.length:
            raise ValueError(f"ids must have at most {self.length} tokens (the classifier's length), "
                             f"got {ids.shape[1]}")
        pad = _padding(ids, self.vocab)
        h = self.embed(ids) + self.position[: ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1)
        return self.head(self.norm(pooled))


class CNNClassifier(nn.Module):
    """Token embeddings, two 1-D convolutions (ReLU), max pooling over the real tokens, a linear head.
    Padding reads as absent: it is zeroed before each convolution and left out of the pooling."""

    def __init__(self, vocab: Vocab, classes: int, length: int, dim: int = 64, channels: int = 64,
                 kernel_size: int = 5):
        super().__init__()
        self.vocab = _check_vocab(vocab)
        self.length = length
        self.embed = nn.Embedding(self.vocab.size, dim)
        self.conv1 = nn.Conv1d(dim, channels, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.head = nn.Linear(channels, classes)
        self.ranem_info = {"name": f"cnn1d-{channels}", "classes": classes, "length": length}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = _padding(ids, self.vocab)
        real = (~pad).unsqueeze(1).to(self.embed.weight.dtype)
        # Zeroing padding before each convolution makes it the convolution's own zero padding:
        # a sequence reads the same whatever padding follows it.
        h = self.embed(ids).transpose(1, 2) * real
        h = torch.relu(self.conv1(h)) * real
        h = torch.relu(self.conv2(h))
        h = h.masked_fill(pad.unsqueeze(1), -math.inf)
        return self.head(h.amax(2))


@torch.no_grad()
def accuracy(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> float:
    """Share of sequences whose top-1 class is the label."""
    was = model.training
    model.eval()
    try:
        pred = torch.cat([model(ids[i:i + batch_size]).argmax(1) for i in range(0, len(ids), batch_size)])
    finally:
        model.train(was)
    return (pred == labels.to(pred.device)).float().mean().item()


def train_classifier(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, *, epochs: int = 5,
                     batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.01, seed: int = 0,
                     progress: bool = True) -> dict:
    """AdamW with a one-cycle schedule (warm-up, then cosine decay, per step) on cross-entropy;
    returns ``{"loss": per-epoch mean loss, "seconds": ...}``. Seeded: same seed, same weights on CPU."""
    ids = check_ids(ids, model.vocab if hasattr(model, "vocab") else None)
    if not isinstance(labels, torch.Tensor) or labels.shape != (ids.shape[0],):
        raise ValueError(f"labels must be a ({ids.shape[0]},) tensor (one class per sequence)")
    epochs, batch_size = _checks.integer(epochs, "epochs"), _checks.integer(batch_size, "batch_size")
    torch.manual_seed(seed)  # initial weights are the caller's; this seeds dropout
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(ids) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    history = {"loss": []}
    t0 = time.perf_counter()
    model.train()
    for _ in tqdm(range(epochs), desc="train classifier", disable=not progress, leave=False):
        order, total = torch.randperm(len(ids), generator=g), 0.0
        for i in range(0, len(ids), batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(ids[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history["loss"].append(total / len(ids))
    model.eval()
    history["seconds"] = time.perf_counter() - t0
    return history
