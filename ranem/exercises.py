"""Checks for the book's runnable exercises: is the student's answer the expected one?

Each runnable exercise has a scaffold cell that sets an answer to ``None`` (the ``# TODO`` the
student replaces) and a check cell that compares it with a value computed independently::

    from ranem.exercises import check
    print(check("the AUC-optimal order", answer, expected, why="..."))

``check`` prints nothing itself (the package never prints); it returns a ``Verdict`` whose text
says "Not answered yet: ...", "Correct: ..." or "Not quite: expected ..., because ...".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ranem import _checks

__all__ = ["Verdict", "check"]


@dataclass(frozen=True)
class Verdict:
    """The outcome of ``check``: ``status`` is 'unanswered', 'correct' or 'wrong'; ``message`` says
    it in a sentence. True only when correct; prints (and displays) as its message."""

    status: str
    message: str

    def __bool__(self) -> bool:
        return self.status == "correct"

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return self.message


def _is_unanswered(answer) -> bool:
    if answer is None:
        return True
    if isinstance(answer, dict) and answer and all(v is None for v in answer.values()):
        return True
    return isinstance(answer, (list, tuple)) and bool(answer) and all(v is None for v in answer)


def _numbers(value):
    """``value`` as a float64 array, or None when it is not made of real numbers (bools excluded)."""
    if isinstance(value, (str, bytes, dict)) or value is None:
        return None
    import torch  # here, not at the top: only to read tensors, which answers often are
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        return None
    if array.dtype == bool or array.dtype == object or not np.issubdtype(array.dtype, np.number):
        return None
    if np.iscomplexobj(array):
        return None
    return array.astype(np.float64)


def _matches(answer, expected, rtol: float, atol: float) -> bool:
    if isinstance(expected, dict):
        return (isinstance(answer, dict) and set(answer) == set(expected)
                and all(_matches(answer[k], expected[k], rtol, atol) for k in expected))
    if isinstance(expected, str):
        return isinstance(answer, str) and answer.strip().casefold() == expected.strip().casefold()
    if isinstance(expected, bool):
        return isinstance(answer, bool) and answer == expected
    e, a = _numbers(expected), _numbers(answer)
    if e is None:
        return answer == expected
    if a is None or a.shape != e.shape or not np.isfinite(a).all():
        return False
    return bool(np.allclose(a, e, rtol=rtol, atol=atol))


def _number(v: float) -> str:
    """An integer without its '.0', anything else to 4 significant digits."""
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"


def _show(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) or isinstance(value, bool) or value is None:
        return repr(value)
    array = _numbers(value)
    if array is None:
        return repr(value)
    if array.ndim == 0:
        return _number(float(array))
    items = [_number(float(v)) for v in array.ravel()[:12]]
    more = ", ..." if array.size > 12 else ""
    shape = f" (shape {array.shape})" if array.ndim > 1 else ""
    return "[" + ", ".join(items) + more + "]" + shape


def check(name: str, answer, expected, *, rtol: float = 1e-3, atol: float = 0.0, why: str | None = None) -> Verdict:
    """Compare an exercise's ``answer`` with the ``expected`` value; return a ``Verdict``.

    name: what the answer is, in words (used in the message). answer: the student's value;
    None (or a dict or list of Nones) means not answered yet. expected: the value computed
    independently by the check cell. Numbers, tensors, arrays and (nested) lists of numbers match
    when they have the same shape and ``numpy.allclose(answer, expected, rtol, atol)`` holds;
    strings match ignoring case and surrounding spaces; bools and other values must be equal;
    dicts match key by key. why: the reason the expected value is right, added to a "Not quite"
    message.
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"name must be a non-empty str saying what is checked, got {name!r}")
    rtol, atol = _checks.number(rtol, "rtol", low=0), _checks.number(atol, "atol", low=0)
    if why is not None and not isinstance(why, str):
        raise TypeError(f"why must be None or a str, got {type(why).__name__}")
    if expected is None:
        raise ValueError("expected must be the right answer, got None")
    if _is_unanswered(answer):
        return Verdict("unanswered", f"Not answered yet ({name}): replace the None after '# TODO' with your "
                                     f"answer and run this check again.")
    if _matches(answer, expected, rtol, atol):
        return Verdict("correct", f"Correct: {name} = {_show(answer)}.")
    reason = f", because {why.strip().rstrip('.')}" if why else ""
    return Verdict("wrong", f"Not quite: expected {_show(expected)} for {name}, got {_show(answer)}{reason}.")
