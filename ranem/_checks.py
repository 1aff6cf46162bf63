"""Argument checks shared by the whole package, in one place.

Each check takes the value first and the argument's name second, raises TypeError (wrong kind of
object) or ValueError (right kind, wrong value; ``integer`` raises ValueError for both, as the
package's int checks always have) with a message that names the argument and says what was
expected and what came, and returns the value (converted where that helps: ints, floats,
devices), so a caller can check and bind in one line::

    steps = _checks.integer(steps, "steps")
    x = _checks.image_batch(x, "x", nonempty=True, finite=True)

The checks run before any forward pass: a bad argument fails here, with its name, rather than
deep inside torch or, worse, silently (a NaN pixel gives a NaN score, a (1, C, H, W) tensor
broadcasts over a batch). This module imports torch only, so every module can use it.
"""
from __future__ import annotations

import difflib
import math
import operator

import torch

__all__ = ["integer", "number", "probability", "flag", "one_of", "names", "size_pair", "tensor", "float_tensor", "finite",
           "image_batch", "shaped", "class_indices", "module", "model_function", "device", "generator", "timm_name"]


# ----------------------------------------------------------------------------- plain values
def integer(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``. NumPy ints and 0-d integer tensors count as ints (they
    implement ``__index__``); bools, floats and strings do not."""
    try:
        as_int = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        as_int = None
    if as_int is None or as_int < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return as_int


def number(value, name: str, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
           high_open: bool = False) -> float:
    """``value`` as a float after checking it is a finite real number in [low, high] (either end
    open with ``low_open``/``high_open``). NaN fails every comparison, so it is refused explicitly."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not (isinstance(value, (int, float)) or hasattr(value, "__float__")):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        as_float = float(value)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    outside = as_float < low or as_float > high or (low_open and as_float == low) or (high_open and as_float == high)
    if not math.isfinite(as_float) or outside:
        bounds = [f"{'>' if low_open else '>='} {low:g}"] if low > -math.inf else []
        bounds += [f"{'<' if high_open else '<='} {high:g}"] if high < math.inf else []
        raise ValueError(f"{name} must be a finite number{' ' + ' and '.join(bounds) if bounds else ''}, "
                         f"got {value!r}")
    return as_float


def probability(value, name: str, open_left: bool = True) -> float:
    """A number in (0, 1] (or [0, 1] with ``open_left=False``), as a float."""
    return number(value, name, low=0, high=1, low_open=open_left)


def flag(value, name: str) -> bool:
    """True or False, nothing else: ``progress="no"`` is truthy and would silently mean yes."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def one_of(value, name: str, choices):
    """``value`` when it is one of ``choices`` (any container; a dict's keys)."""
    try:
        known = value in choices
    except TypeError:  # an unhashable value is in no dict
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def names(value, name: str, choices) -> tuple[str, ...]:
    """A non-empty tuple of names among ``choices`` from one name or a sequence of names (the
    substrates of a NEM, of a curve or of a per-image optimisation)."""
    items = (value,) if isinstance(value, str) else value
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError(f"{name} must be a name or a sequence of names among {sorted(choices)}, got {value!r}") from None
    if not items:
        raise ValueError(f"{name} must be a non-empty sequence of names among {sorted(choices)}, got {value!r}")
    if any(not isinstance(s, str) or s not in choices for s in items):
        raise ValueError(f"{name} must be names among {sorted(choices)}, got {value!r}")
    return items


def size_pair(value, name: str = "size") -> tuple[int, int]:
    """An image size: an int (a square) or a pair (H, W) of ints >= 1, as a tuple."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list, torch.Size)) or len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair (H, W), got {value!r}")
    return integer(value[0], f"{name}[0]"), integer(value[1], f"{name}[1]")


# ----------------------------------------------------------------------------- tensors
def tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def float_tensor(value, name: str) -> torch.Tensor:
    if not tensor(value, name).is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {value.dtype}")
    return value


def finite(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` when it holds no NaN or inf (integer and bool tensors always pass)."""
    if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return t


_finite = finite  # for image_batch, whose keyword ``finite`` hides this function inside it


def image_batch(x, name: str = "x", *, uint8: bool = False, nonempty: bool = False,
                finite: bool = False) -> torch.Tensor:
    """A batch of images: a 4-D (B, C, H, W) float tensor (or uint8 with ``uint8=True``) with at
    least one channel, row and column; with ``nonempty`` at least one image, with ``finite`` no
    NaN or inf (explainers and metrics differentiate through or score every pixel)."""
    tensor(x, name)
    dtypes = "uint8 or floating-point" if uint8 else "floating-point"
    expected = f"{name} must be a batch of images, a 4-D {dtypes} tensor (B, C, H, W)"
    if x.ndim != 4:
        raise ValueError(f"{expected}, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or (uint8 and x.dtype == torch.uint8)):
        raise ValueError(f"{expected}, got dtype {x.dtype}")
    if min(x.shape[1:]) < 1:
        raise ValueError(f"{name} must have at least one channel, row and column, got shape {tuple(x.shape)}")
    if nonempty and x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image, got an empty batch")
    return _finite(x, name) if finite else x


def shaped(t, name: str, shape: tuple, layout: str, against: str) -> torch.Tensor:
    """A real tensor (float, integer or bool) of exactly ``shape``; ``layout`` names the axes
    ("B, H, W") and ``against`` what the shape comes from ("x"), both for the message."""
    tensor(t, name)
    if t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got a complex tensor")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape ({layout}) = {tuple(shape)} to match {against}, "
                         f"got {tuple(t.shape)}")
    return t


def class_indices(target, n: int, device, classes: int | None = None) -> torch.Tensor:
    """``target`` (an int, a sequence of ints, or a tensor of one or ``n`` integers) as an (n,)
    long tensor of class indices on ``device``; below ``classes`` when that is given."""
    if isinstance(target, bool):
        raise TypeError("target must be None, an int, a sequence of ints or a (B,) integer tensor, got a bool")
    if not isinstance(target, torch.Tensor):
        try:  # an int (NumPy ints too) or a sequence of them; range and shape are checked below
            target = torch.tensor(target.__index__()) if hasattr(target, "__index__") else torch.as_tensor(list(target))
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"target must be None, an int, a sequence of ints or a (B,) tensor, "
                            f"got {target!r}") from None
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    target = target.reshape(-1) if target.ndim == 0 else target
    if target.ndim != 1 or target.shape[0] not in (1, n):
        raise ValueError(f"target must have one class per image, shape ({n},), got {tuple(target.shape)}")
    if bool((target < 0).any()):
        raise ValueError("target must hold non-negative class indices")
    if classes is not None and bool((target >= classes).any()):
        raise ValueError(f"target must lie in [0, {classes}) (the model's classes), got {target.tolist()}")
    return target.to(device=device, dtype=torch.long).expand(n).contiguous()


# ----------------------------------------------------------------------------- models and places
def module(value, name: str = "model") -> torch.nn.Module:
    if not isinstance(value, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def model_function(model, name: str = "model"):
    """A classifier to score with: a module, or any callable mapping inputs to logits."""
    if not callable(model):
        raise TypeError(f"{name} must be a torch.nn.Module or a callable giving logits, got {type(model).__name__}")
    return model


def device(value, name: str = "device"):
    """``value`` as a torch.device (None stays None); unknown strings and accelerators that this
    machine lacks are refused here rather than deep inside the first allocation."""
    if value is None:
        return None
    if not isinstance(value, (str, torch.device, int)) or isinstance(value, bool):
        raise TypeError(f"{name} must be None, a str or a torch.device, got {type(value).__name__}")
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{name} must be a device such as 'cpu' or 'cuda:0', got {value!r}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise ValueError(f"{name}={value!r} but this machine has {count} usable CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={value!r} but MPS is not available on this machine")
    return dev


def generator(value, name: str = "generator"):
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be None or a torch.Generator, got {type(value).__name__}")
    return value


def timm_name(value, name: str = "name") -> str:
    """The name of a timm architecture; a typo gets the closest names as a hint."""
    import timm  # here, not at the top: most checks need no timm
    if not isinstance(value, str) or not timm.is_model(value):
        close = difflib.get_close_matches(str(value), timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"{name}={value!r} is not a timm model (see timm.list_models()){hint}")
    return value

