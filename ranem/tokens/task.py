"""A synthetic token task with a known ground truth, generated in milliseconds (no download).

Each class ``c`` owns a group of ``per_class`` evidence symbols. A sequence of class ``c`` holds
``evidence`` tokens drawn from group ``c`` and ``distractors`` (< ``evidence``) tokens drawn from
one other class's group, at random positions; every other position is a filler symbol that belongs
to no group. The class is the group with the most tokens in the sequence, so:

- the planted evidence tokens are exactly what decides the class (the ground truth a ranking is
  checked against: are they ranked first?);
- the distractors are counter-evidence: delete one evidence token and the sequence is a tie,
  delete two and the distractor class wins; a faithful ranking puts the distractors last;
- filler carries nothing.

Vocabulary: 0 = padding, 1 = mask, then the ``classes * per_class`` evidence symbols, then filler.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ranem import _checks
from ranem.tokens.ops import Vocab

__all__ = ["TokenTask", "evidence_task", "task_vocab"]


@dataclass
class TokenTask:
    """Sequences (N, L) long, labels (N,), and the ground truth: ``evidence`` and ``distractor``
    (N, L) bool masks of the planted tokens; ``groups`` (classes, per_class) the evidence symbols."""

    ids: torch.Tensor
    labels: torch.Tensor
    evidence: torch.Tensor
    distractor: torch.Tensor
    vocab: Vocab
    groups: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    def token_names(self, ids) -> list[str]:
        """Readable names of a sequence's ids: 'A2' = symbol 2 of class A's group, 'f17' = filler,
        '[M]' = mask, '_' = padding."""
        names = []
        first = self.vocab.first_regular
        per = self.groups.shape[1]
        for t in torch.as_tensor(ids).tolist():
            if t == self.vocab.pad_id:
                names.append("_")
            elif t == self.vocab.mask_id:
                names.append("[M]")
            elif t < first + self.groups.numel():
                names.append(f"{chr(65 + (t - first) // per)}{(t - first) % per}")
            else:
                names.append(f"f{t - first - self.groups.numel()}")
        return names


def task_vocab(classes: int = 4, per_class: int = 4, fillers: int = 48) -> Vocab:
    """The vocabulary of ``evidence_task`` with these sizes."""
    groups = _checks.integer(classes, "classes") * _checks.integer(per_class, "per_class")
    return Vocab(size=2 + groups + _checks.integer(fillers, "fillers"))


def evidence_task(n: int, length: int = 32, classes: int = 4, per_class: int = 4, evidence: int = 3,
                  distractors: int = 2, fillers: int = 48, seed: int = 0) -> TokenTask:
    """``n`` sequences of ``length`` tokens (see the module docstring), balanced classes in random
    order, from a CPU generator seeded with ``seed`` (same seed, same task)."""
    for name, v in (("n", n), ("length", length), ("evidence", evidence)):
        _checks.integer(v, name)
    if classes < 2:
        raise ValueError(f"classes must be >= 2 (a distractor needs another class), got {classes!r}")
    if isinstance(distractors, bool) or not isinstance(distractors, int) or not 0 <= distractors < evidence:
        raise ValueError(f"distractors must be an int in [0, evidence) = [0, {evidence}) so the class is "
                         f"decided, got {distractors!r}")
    if evidence + distractors > length:
        raise ValueError(f"length must hold evidence + distractors = {evidence + distractors} tokens, got {length}")
    vocab = task_vocab(classes, per_class, fillers)
    g = torch.Generator().manual_seed(seed)
    first = vocab.first_regular
    groups = torch.arange(first, first + classes * per_class).view(classes, per_class)
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=g)]
    ids = torch.randint(first + classes * per_class, vocab.size, (n, length), generator=g)
    # Distinct random positions: the first `evidence` for the class, the next for the distractors.
    pos = torch.rand(n, length, generator=g).argsort(1)
    ev_pos, dis_pos = pos[:, :evidence], pos[:, evidence:evidence + distractors]
    other = (labels + torch.randint(1, classes, (n,), generator=g)) % classes  # any class but the label
    ids.scatter_(1, ev_pos, groups[labels[:, None], torch.randint(per_class, (n, evidence), generator=g)])
    ids.scatter_(1, dis_pos, groups[other[:, None], torch.randint(per_class, (n, distractors), generator=g)])
    ev = torch.zeros(n, length, dtype=torch.bool).scatter_(1, ev_pos, True)
    dis = torch.zeros(n, length, dtype=torch.bool).scatter_(1, dis_pos, True)
    return TokenTask(ids, labels, ev, dis, vocab, groups)
