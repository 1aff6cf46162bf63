"""The masking operator on token sequences: substrates for symbols and omega over the token axis.

A sequence is a (B, L) integer tensor of token ids; an attribution is (B, L). Partial occlusion of
a symbol means nothing, so a removed token is replaced by another *symbol* (a substrate):

- ``"mask"``: the vocabulary's mask token (BERT's [MASK]);
- ``"pad"``: the padding token, left in place;
- ``"random"``: a random regular token (never a special one);
- ``"delete"``: the token is deleted, the kept tokens close up in their order and the sequence is
  re-padded at its end (the classifier sees a shorter sequence).

Padding positions of the input are never replaced (a substrate keeps them padding), so a padded
batch keeps its lengths. The mask maths is ``ranem.ops.topk_mask``, shared with images; only the
composition differs: ids are chosen in the forward pass (exactly the discrete masked sequence), and
gradients reach the scores through the *embeddings*, ``E(x) * M + E(r) * (1 - M)`` (straight-through;
its value is exactly ``E(masked ids)``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ranem import _checks, ops

__all__ = ["Vocab", "TOKEN_SUBSTRATES", "check_ids", "check_attribution", "token_substrate", "compose",
           "compaction_order", "omega_tokens", "mix_embeddings"]

TOKEN_SUBSTRATES = ("mask", "pad", "random", "delete")


@dataclass(frozen=True)
class Vocab:
    """A vocabulary's size and its special tokens: ids ``0 .. size-1``; ``pad_id`` and ``mask_id``
    are special, every id from ``first_regular`` on is an ordinary symbol."""

    size: int
    pad_id: int = 0
    mask_id: int = 1
    first_regular: int = 2

    def __post_init__(self):
        for name in ("size", "pad_id", "mask_id", "first_regular"):
            _checks.integer(getattr(self, name), f"Vocab.{name}", minimum=0)
        if not max(self.pad_id, self.mask_id) < self.first_regular < self.size:
            raise ValueError(f"Vocab needs pad_id, mask_id < first_regular < size, got {self}")
        if self.pad_id == self.mask_id:
            raise ValueError(f"Vocab.pad_id and Vocab.mask_id must differ, got {self.pad_id}")

    def as_dict(self) -> dict:
        return asdict(self)


def _check_vocab(vocab) -> Vocab:
    if isinstance(vocab, dict):
        return Vocab(**vocab)
    if not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be a ranem.tokens.Vocab, got {type(vocab).__name__}")
    return vocab


def check_ids(ids, vocab: Vocab | None = None, name: str = "ids") -> torch.Tensor:
    """A non-empty (B, L) integer tensor of token ids, inside the vocabulary when one is given."""
    _checks.tensor(ids, name)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of token ids (B, L), got {ids.dtype}")
    if ids.ndim != 2 or min(ids.shape) < 1:
        raise ValueError(f"{name} must be a non-empty batch of sequences (B, L), got shape {tuple(ids.shape)}")
    if vocab is not None:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab.size:
            raise ValueError(f"{name} must hold ids in [0, {vocab.size}) (the vocabulary), got values in [{lo}, {hi}]")
    return ids.long()


def check_attribution(attribution, ids: torch.Tensor, name: str = "attribution") -> torch.Tensor:
    """A finite real (B, L) tensor matching ``ids``."""
    return _checks.finite(_checks.shaped(attribution, name, ids.shape, "B, L", "the token ids"), name)


# ----------------------------------------------------------------------------- substrates
def token_substrate(name: str, ids: torch.Tensor, vocab: Vocab,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Replacement ids (B, L) of substrate ``name`` for ``ids``; padding stays padding. "delete"
    replaces by padding here; ``compose``/``omega_tokens`` then close the sequence up."""
    _checks.one_of(name, "substrate", TOKEN_SUBSTRATES)
    if name == "mask":
        r = torch.full_like(ids, vocab.mask_id)
    elif name in ("pad", "delete"):
        r = torch.full_like(ids, vocab.pad_id)
    else:  # random regular symbols, drawn on the generator's device so a seed means one draw everywhere
        gen_device = generator.device if generator is not None else ids.device
        r = torch.randint(vocab.first_regular, vocab.size, ids.shape, generator=generator,
                          device=gen_device).to(ids.device)
    return torch.where(ids == vocab.pad_id, ids, r)


def compaction_order(keep: torch.Tensor, compact: torch.Tensor) -> torch.Tensor:
    """(B, L) gather indices that move each row's kept positions to its front, in their order (a
    stable partition), for the rows where ``compact`` (B,) is True; identity elsewhere."""
    positions = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    key = torch.where(compact[:, None], (~keep).long(), torch.zeros_like(positions))
    return torch.sort(key, dim=1, stable=True).indices


def _keep_real(keep: torch.Tensor, ids: torch.Tensor, vocab: Vocab) -> torch.Tensor:
    # Padding is no token: a kept pad must not move in front of a later real token.
    return keep & (ids != vocab.pad_id)


def compose(ids: torch.Tensor, replacement: torch.Tensor, keep: torch.Tensor, compact: torch.Tensor,
            vocab: Vocab) -> torch.Tensor:
    """The discrete masked sequences: ``ids`` where ``keep`` (B, L) is True, ``replacement``
    elsewhere; rows with ``compact`` (B,) True are then closed up and re-padded ("delete")."""
    out = torch.where(keep, ids, replacement)
    if bool(compact.any()):
        order = compaction_order(_keep_real(keep, ids, vocab), compact)
        out = out.gather(1, order)
    return out


def mix_embeddings(emb_x: torch.Tensor, emb_r: torch.Tensor, mask: torch.Tensor,
                   order: torch.Tensor | None = None) -> torch.Tensor:
    """``E(x) * M + E(r) * (1 - M)`` for embeddings (B, L, E) and a mask (B, L), gathered along the
    sequence by ``order`` when given (deletion). For a binary M its value is exactly the embedding of
    the masked ids; with a straight-through M its gradient reaches the scores."""
    m = mask.to(emb_x.dtype).unsqueeze(-1)
    mixed = emb_x * m + emb_r * (1 - m)
    if order is not None:
        mixed = mixed.gather(1, order.unsqueeze(-1).expand_as(mixed))
    return mixed


def _substrate_rows(substrate, ids, vocab, generator):
    """(replacement ids, compact flags (B,)) from a substrate name or from a (B, L) tensor of
    replacement ids (no compaction), checked."""
    if isinstance(substrate, torch.Tensor):
        r = check_ids(substrate, vocab, "substrate")
        if r.shape != ids.shape or r.device != ids.device:
            raise ValueError(f"substrate tensor must be shaped like ids {tuple(ids.shape)} on {ids.device}, "
                             f"got {tuple(r.shape)} on {r.device}")
        return torch.where(ids == vocab.pad_id, ids, r), torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    if isinstance(substrate, str):
        compact = torch.full((ids.shape[0],), substrate == "delete", device=ids.device)
        return token_substrate(substrate, ids, vocab, generator), compact
    raise TypeError(f"substrate must be a name among {TOKEN_SUBSTRATES} or a (B, L) tensor of ids, "
                    f"got {type(substrate).__name__}")


def omega_tokens(ids: torch.Tensor, scores: torch.Tensor, k, substrate, vocab: Vocab,
                 generator: torch.Generator | None = None, noise: bool = True, compact=None):
    """Keep the top-k tokens of ``scores + Gumbel noise`` and replace the others (Algorithm 1 on
    the token axis, batched).

    ids: (B, L) token ids; scores: (B, L) attribution logits, higher = keep; k: an int or a (B,)
    integer tensor; substrate: a name in ``TOKEN_SUBSTRATES`` or a (B, L) tensor of replacement ids;
    compact: optional (B,) bool overriding which rows are closed up (mixed substrates in a batch).

    Returns ``(masked_ids, replacement, mask, order)``: the discrete masked sequences (B, L), the
    replacement ids, the straight-through mask M (B, L) of ``ranem.ops.topk_mask`` (exactly k ones
    per row, sigmoid gradient) and the compaction order (B, L) (identity for rows not closed up),
    so that ``mix_embeddings(E(ids), E(replacement), M, order)`` equals ``E(masked_ids)``.
    """
    vocab = _check_vocab(vocab)
    ids = check_ids(ids, vocab)
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if tuple(scores.shape) != tuple(ids.shape):
        raise ValueError(f"scores must have shape (B, L) = {tuple(ids.shape)} to match ids, got {tuple(scores.shape)}")
    ops._per_row_k(k, ids.shape[0], ids.shape[1], ids.device)  # k errors before any draw
    r, flags = _substrate_rows(substrate, ids, vocab, generator)
    if compact is not None:
        if not isinstance(compact, torch.Tensor) or compact.dtype != torch.bool or compact.shape != flags.shape:
            raise ValueError(f"compact must be None or a ({ids.shape[0]},) bool tensor")
        flags = compact.to(ids.device)
    mask = ops.topk_mask(scores, k, generator=generator, noise=noise)
    hard = mask.detach() > 0.5
    order = compaction_order(_keep_real(hard, ids, vocab), flags)
    masked = torch.where(hard, ids, r).gather(1, order)
    return masked, r, mask, order
