"""Attribution baselines over tokens: Saliency and Integrated Gradients on the embeddings (through
Captum's layer attributions on the classifier's token embedding), occlusion and a random ranking.

Every method is ``f(model, ids, target=None, **options) -> (B, L)``, higher = more important;
``target`` is a class per sequence (default: the model's top-1). Ids can't be differentiated, so the
gradient methods differentiate with respect to the token *embeddings*:

- Saliency: the L2 norm over the embedding dimension of d logit_target / d E(x)_i;
- Integrated Gradients: the path integral from the embeddings of a baseline sequence (default:
  every token replaced by the mask token, the curves' substrate) to E(x), summed over the embedding
  dimension (signed: negative evidence ranks last);
- occlusion: p_target(x) - p_target(x with token i replaced by the substrate), all L occluded
  copies of a sequence in batches;
- random: i.i.d. uniform scores from a seeded generator.
"""
from __future__ import annotations

import torch
from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

from ranem import _checks
from ranem.baselines._common import frozen
from ranem.tokens.nem import find_token_embedding
from ranem.tokens.ops import Vocab, _check_vocab, check_ids, token_substrate

__all__ = ["token_saliency", "token_integrated_gradients", "token_occlusion", "token_random", "TOKEN_EXPLAINERS"]


def _setup(model, ids, target, vocab):
    _checks.module(model)
    vocab = _check_vocab(vocab if vocab is not None else getattr(model, "vocab", None) or _no_vocab())
    ids = check_ids(ids, vocab)
    p = next(model.parameters(), None)
    if p is not None and p.device != ids.device:
        raise ValueError(f"ids are on {ids.device} but the model's parameters are on {p.device}; move one of them")
    with torch.no_grad(), frozen(model):
        logits = model(ids)
    if target is None:
        return vocab, ids, logits.argmax(1)
    return vocab, ids, _checks.class_indices(target, ids.shape[0], ids.device, classes=logits.shape[1])


def _no_vocab():
    raise TypeError("vocab must be given (a ranem.tokens.Vocab) for a model without a .vocab")


def _embedding(model, vocab):
    return dict(model.named_modules())[find_token_embedding(model, vocab)]  # the one the ids go through


def token_saliency(model, ids, target=None, vocab: Vocab | None = None) -> torch.Tensor:
    """|| d logit_target / d E(x)_i ||_2 per token (one backward pass)."""
    vocab, ids, t = _setup(model, ids, target, vocab)
    with frozen(model), torch.enable_grad():
        grads = LayerGradientXActivation(model, _embedding(model, vocab), multiply_by_inputs=False).attribute(
            ids, target=t)
    return grads.norm(dim=-1).detach()


def token_integrated_gradients(model, ids, target=None, vocab: Vocab | None = None, steps: int = 50,
                               baseline: str = "mask", internal_batch_size: int = 512) -> torch.Tensor:
    """Integrated Gradients on the embeddings from the ``baseline`` substrate's sequence ("mask" or
    "pad"), summed over the embedding dimension; ``steps`` forward+backward passes per sequence."""
    _checks.integer(steps, "steps")
    _checks.integer(internal_batch_size, "internal_batch_size")
    vocab, ids, t = _setup(model, ids, target, vocab)
    if baseline not in ("mask", "pad"):
        raise ValueError(f"baseline must be 'mask' or 'pad' (a fixed sequence), got {baseline!r}")
    base = token_substrate(baseline, ids, vocab)
    with frozen(model), torch.enable_grad():
        attr = LayerIntegratedGradients(model, _embedding(model, vocab)).attribute(
            ids, baselines=base, target=t, n_steps=steps, internal_batch_size=max(internal_batch_size, ids.shape[0]))
    return attr.sum(-1).detach().float()


@torch.no_grad()
def token_occlusion(model, ids, target=None, vocab: Vocab | None = None, substrate: str = "mask",
                    batch_size: int = 1024, generator=None) -> torch.Tensor:
    """Drop of p_target when token i alone is replaced by ``substrate`` ("mask", "pad" or
    "random"); the B*L occluded sequences go through the model in batches of ``batch_size``."""
    _checks.integer(batch_size, "batch_size")
    vocab, ids, t = _setup(model, ids, target, vocab)
    if substrate not in ("mask", "pad", "random"):
        raise ValueError(f"substrate must be 'mask', 'pad' or 'random' for occlusion, got {substrate!r}")
    b, length = ids.shape
    with frozen(model):
        p_clean = model(ids).float().softmax(1).gather(1, t[:, None])
        r = token_substrate(substrate, ids, vocab, generator)
        # Row (sequence j, position i): sequence j with token i replaced.
        eye = torch.eye(length, dtype=torch.bool, device=ids.device)
        seq = torch.arange(b, device=ids.device).repeat_interleave(length)
        pos = torch.arange(length, device=ids.device).repeat(b)
        drops = torch.empty(b * length, device=ids.device)
        for start in range(0, b * length, batch_size):
            j, i = seq[start:start + batch_size], pos[start:start + batch_size]
            occluded = torch.where(eye[i], r[j], ids[j])
            p = model(occluded).float().softmax(1).gather(1, t[j, None])[:, 0]
            drops[start:start + batch_size] = p_clean[j, 0] - p
    return drops.view(b, length)


def token_random(model, ids, target=None, vocab: Vocab | None = None, seed: int = 0) -> torch.Tensor:
    """Uniform random scores (B, L): the floor every ranking should beat."""
    vocab, ids, _ = _setup(model, ids, target, vocab)
    g = torch.Generator().manual_seed(seed)
    return torch.rand(ids.shape, generator=g).to(ids.device)


TOKEN_EXPLAINERS = {"saliency": token_saliency, "integrated_gradients": token_integrated_gradients,
                    "occlusion": token_occlusion, "random": token_random}
