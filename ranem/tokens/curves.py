"""Insertion and deletion curves, and faithfulness, over the tokens of a sequence.

The maths is that of ``ranem.metrics.curves`` (the same row scheduler, ranking, clean-forward reuse
and AUC): only the composition of a masked input differs. Point ``i`` of the insertion curve keeps
the ``k_i`` top-ranked tokens and shows the substrate elsewhere; point ``i`` of the deletion curve
replaces the ``k_i`` top-ranked tokens. ``k_i = min(i * tokens_per_step, L)``; the default is one
token per step, so sequences of a few dozen tokens get their exact curves. The score is the
softmax probability of the clean sequence's top-1 class (or of ``target``).

``model`` maps (N, L) token ids to (N, classes) logits. Substrates are those of
``ranem.tokens.ops`` ("mask", "pad", "random", "delete"); both curves default to "mask".
"""
from __future__ import annotations

import torch

from ranem import _checks
from ranem.metrics import curves as _curves
from ranem.metrics.curves import auc
from ranem.tokens.ops import Vocab, _check_vocab, check_attribution, check_ids, compose, token_substrate

__all__ = ["token_insertion_curve", "token_deletion_curve", "token_faithfulness"]


def _check_model(model, ids: torch.Tensor) -> None:
    if isinstance(_checks.model_function(model), torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None and p.device != ids.device:
            raise ValueError(f"ids are on {ids.device} but the model's parameters are on {p.device}; move one of them")


def _token_scores(model, ids, attribution, vocab, kinds, substrates, steps, tokens_per_step, target,
                  batch_size, generator):
    vocab = _check_vocab(vocab)
    ids = check_ids(ids, vocab)
    check_attribution(attribution, ids)
    _check_model(model, ids)
    for s in substrates:
        token_substrate(s, ids[:1], vocab)  # an unknown name fails before any forward
    b, length = ids.shape
    if steps is None and tokens_per_step is None:
        tokens_per_step = 1
    counts = _curves.pixel_counts(length, steps, tokens_per_step)
    grid = counts.view(1, 1, -1).expand(b, len(kinds), -1)
    deleting = torch.tensor([s == "delete" for s in substrates], device=ids.device)

    def replacement(x, name, gen):
        return token_substrate(name, x, vocab, gen)

    def compose_rows(x, subs, ranks, image, count, deletion, source):
        keep = (ranks[image] < count[:, None]) ^ deletion[:, None]
        return compose(x[image], subs[source], keep, deleting[source // b], vocab)

    return _curves._scores(model, ids, attribution, kinds, grid, substrates, target, batch_size, generator,
                           False, replacement=replacement, compose=compose_rows)


def token_insertion_curve(model, ids, attribution, vocab: Vocab, steps=None, tokens_per_step=None,
                          substrate="mask", target=None, batch_size=512, generator=None) -> torch.Tensor:
    """Insertion curve (B, steps+1) over tokens: point 0 is the substrate alone, the last the sequence."""
    return _token_scores(model, ids, attribution, vocab, ("insertion",), (substrate,), steps, tokens_per_step,
                         target, batch_size, generator)[:, 0]


def token_deletion_curve(model, ids, attribution, vocab: Vocab, steps=None, tokens_per_step=None,
                         substrate="mask", target=None, batch_size=512, generator=None) -> torch.Tensor:
    """Deletion curve (B, steps+1) over tokens: point 0 is the sequence, the last the substrate alone."""
    return _token_scores(model, ids, attribution, vocab, ("deletion",), (substrate,), steps, tokens_per_step,
                         target, batch_size, generator)[:, 0]


def token_faithfulness(model, ids, attribution, vocab: Vocab, steps=None, tokens_per_step=None,
                       insertion_substrate="mask", deletion_substrate="mask", target=None, batch_size=512,
                       generator=None, return_curves=False):
    """Insertion AUC minus deletion AUC over tokens, per sequence (B,); both curves share one clean
    forward and fill the same batches. ``return_curves`` also returns ``(insertion, deletion)``."""
    both = _token_scores(model, ids, attribution, vocab, ("insertion", "deletion"),
                         (insertion_substrate, deletion_substrate), steps, tokens_per_step, target, batch_size,
                         generator)
    ins, dele = both[:, 0], both[:, 1]
    faith = auc(ins) - auc(dele)
    return (faith, ins, dele) if return_curves else faith
