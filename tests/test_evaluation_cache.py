"""ranem.evaluations.get_evaluation: ranem.metrics.evaluate computed once per method, classifier, images,
options and package code, then loaded."""
import pytest
import torch

from ranem import config, evaluations, metrics
from ranem.cache import CacheError


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("RANEM_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    net.ranem_info = {"key": "test-net-0123456789ab"}
    return net


@pytest.fixture
def calls(monkeypatch):
    """Counts the real evaluations behind get_evaluation."""
    seen = []
    real = metrics.evaluate

    def counting(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(metrics, "evaluate", counting)
    return seen


def test_the_second_call_loads_what_the_first_computed(model, calls):
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    settings = config.settings("quick")
    first = evaluations.get_evaluation("saliency", model, x, settings, steps=4, robust=2, sensitivity_samples=2)
    again = evaluations.get_evaluation("Saliency", model, x, settings, steps=4, robust=2, sensitivity_samples=2)
    assert len(calls) == 1
    assert set(first) == set(again) and first["seconds"] > 0 and again["seconds"] == first["seconds"]
    for key in ("attribution", "faithfulness", "insertion", "deletion", "sensitivity", "randomisation"):
        torch.testing.assert_close(again[key], first[key])
    assert first["attribution"].shape == (3, 16, 16) and first["insertion"].shape == (3, 5)


def test_the_cached_result_is_what_evaluate_returns(model, calls):
    from ranem.baselines import get_explainer
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    settings = config.settings("quick")
    cached = evaluations.get_evaluation("saliency", model, x, settings, steps=4)
    cached = evaluations.get_evaluation("saliency", model, x, settings, steps=4)
    direct = metrics.evaluate(get_explainer("saliency", settings=settings), model, x, steps=4)
    for key in ("attribution", "faithfulness", "insertion", "deletion"):
        torch.testing.assert_close(cached[key], direct[key])
    assert len(calls) == 2  # one behind the cache, one direct


@pytest.mark.parametrize("change", ["images", "options", "settings", "method", "classifier"])
def test_any_change_of_what_decides_the_result_recomputes(model, calls, change):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    settings = config.settings("quick")
    evaluations.get_evaluation("saliency", model, x, settings, steps=4)
    args = {"method": "saliency", "x": x, "settings": settings, "steps": 4}
    if change == "images":
        args["x"] = x.flip(-1)
    elif change == "options":
        args["steps"] = 8
    elif change == "settings":
        args["settings"] = config.settings("quick", rise_masks=32)
    elif change == "method":
        args["method"] = "gradient_shap"
    else:
        model.ranem_info = {"key": "test-net-another"}
    evaluations.get_evaluation(args.pop("method"), model, args.pop("x"), args.pop("settings"), **args)
    assert len(calls) == 2


def test_the_package_code_is_part_of_the_key(model, calls, monkeypatch):
    x = torch.rand(2, 3, 16, 16)
    evaluations.get_evaluation("saliency", model, x, config.settings("quick"), steps=4)
    monkeypatch.setattr(evaluations, "code_digest", lambda: "edited")
    evaluations.get_evaluation("saliency", model, x, config.settings("quick"), steps=4)
    assert len(calls) == 2


def test_bad_requests_are_refused(model):
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="time_images"):
        evaluations.get_evaluation("saliency", model, x, config.settings("quick"), time_images=1)
    del model.ranem_info
    with pytest.raises(ValueError, match="get_classifier"):
        evaluations.get_evaluation("saliency", model, x, config.settings("quick"))


def test_a_corrupted_entry_is_reported_not_used(model, tmp_path):
    x = torch.rand(2, 3, 16, 16)
    evaluations.get_evaluation("saliency", model, x, config.settings("quick"), steps=4)
    (path,) = (tmp_path / "cache" / "evaluations").glob("*.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="compute it again"):
        evaluations.get_evaluation("saliency", model, x, config.settings("quick"), steps=4)


def test_book_protocol_is_the_settings_evaluation_options_and_shares_entries(model, calls):
    settings = config.settings("quick")
    options = evaluations.book_protocol(settings, seed=3)
    assert options == dict(steps=settings.curve_steps, robust=settings.n_robust,
                           sensitivity_samples=settings.sensitivity_samples, seed=3)
    x = torch.rand(max(2, settings.n_robust), 3, 16, 16, generator=torch.Generator().manual_seed(2))
    evaluations.get_evaluation("saliency", model, x, settings, **options)
    evaluations.get_evaluation("saliency", model, x, settings, **evaluations.book_protocol(settings, seed=3))
    assert len(calls) == 1  # two chapters passing the protocol share one entry
    with pytest.raises(ValueError, match="seed"):
        evaluations.book_protocol(settings, seed=-1)
