"""Tests of ranem.exercises.check, the verdict of the book's runnable exercises."""
import numpy as np
import pytest
import torch

from ranem.exercises import Verdict, check


def test_an_unanswered_exercise_says_so():
    for answer in (None, {"a": None, "b": None}, [None, None]):
        v = check("the answer", answer, 1.0)
        assert v.status == "unanswered" and not v
        assert str(v) == ("Not answered yet (the answer): replace the None after '# TODO' with your answer and "
                          "run this check again.")


def test_numbers_match_within_the_relative_tolerance():
    assert check("p", 0.3001, 0.3, rtol=1e-3)
    v = check("p", 0.31, 0.3, rtol=1e-3, why="the product of (1 - j/d)")
    assert v.status == "wrong" and not v
    assert str(v) == "Not quite: expected 0.3 for p, got 0.31, because the product of (1 - j/d)."
    assert check("tiny", 3.1e-11, 3.1e-11 * (1 + 1e-5))  # relative, not absolute: tiny numbers still compare
    assert not check("tiny", 1e-11, 3e-11)
    assert check("zero", 1e-9, 0.0, atol=1e-8)


def test_tensors_arrays_and_lists_compare_elementwise_and_need_the_same_shape():
    expected = torch.tensor([0, 3, 1, 2])
    assert check("order", [0, 3, 1, 2], expected)
    assert check("order", np.array([0, 3, 1, 2]), expected)
    assert check("order", torch.tensor([0.0, 3.0, 1.0, 2.0], dtype=torch.float64), expected)
    assert not check("order", [0, 1, 2, 3], expected)
    assert not check("order", [0, 3, 1], expected)
    assert not check("order", [[0, 3, 1, 2]], expected)
    assert not check("order", [0, 3, 1, float("nan")], expected)
    assert str(check("order", [0, 1, 2, 3], expected)).startswith("Not quite: expected [0, 3, 1, 2] for order")


def test_strings_bools_and_dicts():
    assert check("the substrate", " Blur", "blur")
    assert not check("the substrate", "zeros", "blur")
    assert check("flag", True, True) and not check("flag", 1, True) and not check("flag", "yes", True)
    expected = {"zeros": 0.2, "blur": 0.3}
    assert check("AUCs", {"blur": 0.3, "zeros": 0.2}, expected)
    assert not check("AUCs", {"blur": 0.3, "zeros": None}, expected)
    assert not check("AUCs", {"blur": 0.3}, expected)
    assert not check("a number", "0.3", 0.3)  # a string is not a number


def test_the_verdict_prints_and_displays_as_its_message():
    v = check("x", 2, 2)
    assert isinstance(v, Verdict) and v.status == "correct" and v
    assert str(v) == repr(v) == "Correct: x = 2."


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(name=""), TypeError, "name must be a non-empty str"),
    (dict(name=3), TypeError, "name must be a non-empty str"),
    (dict(rtol=-1), ValueError, "rtol must be a finite number >= 0"),
    (dict(atol=float("nan")), ValueError, "atol must be a finite number >= 0"),
    (dict(why=3), TypeError, "why must be None or a str"),
    (dict(expected=None), ValueError, "expected must be the right answer"),
])
def test_bad_arguments_name_themselves(kwargs, error, match):
    args = dict(name="x", answer=1.0, expected=1.0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        check(args.pop("name"), args.pop("answer"), args.pop("expected"), **args)
