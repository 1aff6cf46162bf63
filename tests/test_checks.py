"""ranem._checks: each check names the argument, says what it must be, and returns the value."""
import math

import numpy as np
import pytest
import torch

from ranem import _checks


def test_integer_takes_ints_and_their_numpy_and_tensor_forms_only():
    assert _checks.integer(3, "n") == 3 and _checks.integer(np.int64(3), "n") == 3
    assert _checks.integer(torch.tensor(2), "n") == 2 and _checks.integer(0, "seed", minimum=0) == 0
    for bad in (True, 2.5, "3", None, 0, torch.tensor([1, 2]), torch.tensor(2.0)):
        with pytest.raises(ValueError, match=r"^n must be an int >= 1, got"):
            _checks.integer(bad, "n")


def test_number_bounds_and_their_ends():
    assert _checks.number(torch.tensor(0.5), "p", 0, 1) == 0.5
    with pytest.raises(ValueError, match=r"dropout must be a finite number >= 0 and < 1, got 1"):
        _checks.number(1, "dropout", low=0, high=1, high_open=True)
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got 0"):
        _checks.number(0, "lr", low=0, low_open=True)
    with pytest.raises(ValueError, match="finite"):
        _checks.number(math.nan, "x")
    with pytest.raises(TypeError, match="x must be a real number"):
        _checks.number("1", "x")
    assert _checks.probability(1, "p") == 1.0 and _checks.probability(0, "area", open_left=False) == 0.0


def test_one_of_lists_the_choices():
    with pytest.raises(ValueError, match=r"^kind must be one of 'cnn', 'vit', got 'mlp'$"):
        _checks.one_of("mlp", "kind", ("cnn", "vit"))
    with pytest.raises(ValueError, match="kind must be one of"):
        _checks.one_of(["cnn"], "kind", {"cnn": 1})  # unhashable: in no dict
    assert _checks.one_of("vit", "kind", ("cnn", "vit")) == "vit"


def test_image_batch_says_what_a_batch_is():
    x = torch.zeros(2, 3, 4, 4)
    assert _checks.image_batch(x) is x
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        _checks.image_batch([x])
    with pytest.raises(ValueError, match=r"x must be a batch of images, a 4-D floating-point tensor \(B, C, H, W\), got shape"):
        _checks.image_batch(x[0])
    with pytest.raises(ValueError, match="uint8 or floating-point .* got dtype torch.int32"):
        _checks.image_batch(x.int(), "images", uint8=True)
    assert _checks.image_batch(x.to(torch.uint8), "images", uint8=True).dtype == torch.uint8
    with pytest.raises(ValueError, match="x must hold at least one image, got an empty batch"):
        _checks.image_batch(x[:0], nonempty=True)
    with pytest.raises(ValueError, match=r"x must be finite \(no NaN or inf\)"):
        _checks.image_batch(x.clone().fill_(math.inf), finite=True)


def test_shaped_and_finite():
    a = torch.zeros(2, 4, 4)
    assert _checks.shaped(a, "attribution", (2, 4, 4), "B, H, W", "x") is a
    with pytest.raises(ValueError, match=r"attribution must have shape \(B, H, W\) = \(2, 4, 5\) to match x, got"):
        _checks.shaped(a, "attribution", (2, 4, 5), "B, H, W", "x")
    with pytest.raises(TypeError, match="real numbers"):
        _checks.shaped(a.to(torch.complex64), "attribution", (2, 4, 4), "B, H, W", "x")
    assert _checks.finite(torch.tensor([True]), "mask") is not None  # integer and bool tensors are finite


def test_class_indices():
    assert _checks.class_indices(1, 3, "cpu").tolist() == [1, 1, 1]
    assert _checks.class_indices([0, 2], 2, "cpu", classes=3).tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"target must lie in \[0, 3\)"):
        _checks.class_indices(3, 2, "cpu", classes=3)
    with pytest.raises(ValueError, match="one class per image"):
        _checks.class_indices([0, 1, 2], 2, "cpu")
    with pytest.raises(TypeError, match="integer class indices"):
        _checks.class_indices(torch.tensor([0.5]), 1, "cpu")
    with pytest.raises(TypeError, match="got a bool"):
        _checks.class_indices(True, 1, "cpu")


def test_size_pair_flag_and_timm_name():
    assert _checks.size_pair(4) == (4, 4) and _checks.size_pair((2, 3)) == (2, 3)
    with pytest.raises(ValueError, match=r"size\[1\] must be an int >= 1"):
        _checks.size_pair((2, 0))
    with pytest.raises(TypeError, match="progress must be True or False"):
        _checks.flag("yes", "progress")
    with pytest.raises(ValueError, match="did you mean resnet10t"):
        _checks.timm_name("resnet10tt")


def test_names_takes_one_name_or_a_sequence_of_known_names():
    choices = ("zeros", "blur")
    assert _checks.names("blur", "substrates", choices) == ("blur",)
    assert _checks.names(["zeros", "blur"], "substrates", choices) == ("zeros", "blur")
    with pytest.raises(ValueError, match=r"substrates must be names among \['blur', 'zeros'\], got \('grey',\)"):
        _checks.names(("grey",), "substrates", choices)
    with pytest.raises(ValueError, match="substrates must be a non-empty sequence"):
        _checks.names((), "substrates", choices)
    with pytest.raises(TypeError, match="substrates must be a name or a sequence of names"):
        _checks.names(3, "substrates", choices)
