"""Tests of ranem.optimise.optimise_attribution: chapter 4's per-image optimisation of Ra-NEM's loss."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ranem
from ranem import ops
from ranem.metrics import faithfulness
from ranem.nem import RaNEM
from ranem.optimise import optimise_attribution


def patch_model(side=8, dtype=torch.float32):
    """A 2-class linear model whose class-1 logit reads only a 3 x 3 patch: keeping the patch keeps
    the class, so an attribution that ranks the patch first has a high faithfulness."""
    d = side * side
    weight = torch.zeros(2, 3, side, side, dtype=dtype)
    weight[1, :, 2:5, 3:6] = 1.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * d, 2)).to(dtype)
    with torch.no_grad():
        model[1].weight.copy_(weight.view(2, -1))
        model[1].bias.copy_(torch.tensor([0.0, -4.0], dtype=dtype))
    return model.eval()


def patch_images(n=3, side=8, dtype=torch.float32, seed=0):
    x = 0.3 * torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    x[:, :, 2:5, 3:6] += 1.0
    return x


@pytest.fixture(scope="module")
def conv_model():
    # A small CNN with a spatial conv, so the masked input's neighbourhoods matter.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3)).eval()


def test_shapes_of_the_maps_and_the_history(conv_model):
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    a, h = optimise_attribution(conv_model, x, steps=5, samples=3, eval_every=2, curve_steps=6,
                                generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 12, 12) and a.dtype == torch.float32 and not a.requires_grad
    assert h["iteration"].tolist() == [0, 2, 4, 5]
    for key in ("insertion", "deletion", "faithfulness"):
        assert h[key].shape == (4, 2)
    torch.testing.assert_close(h["faithfulness"], h["insertion"] - h["deletion"])
    assert h["loss"].shape == (5, 2) and ((h["loss"] >= 0) & (h["loss"] <= 1)).all()
    assert h["logits"].shape == (2, 12, 12) and h["target"].shape == (2,) and h["seconds"] > 0
    # the logits start at 0: iteration 0 scores the row-major ranking (all values tie)
    flat = torch.zeros(2, 12, 12)
    torch.testing.assert_close(h["faithfulness"][0], faithfulness(conv_model, x, flat, steps=6))


@pytest.mark.parametrize("resolution, grid", [(4, (4, 4)), ((3, 6), (3, 6)), (None, (12, 12))])
def test_a_coarse_grid_is_upsampled_bilinearly(conv_model, resolution, grid):
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    a, h = optimise_attribution(conv_model, x, resolution=resolution, steps=3, samples=2,
                                generator=torch.Generator().manual_seed(0))
    assert h["logits"].shape == (2, *grid) and a.shape == (2, 12, 12)
    up = F.interpolate(h["logits"][:, None], size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(a, up)
    assert h["iteration"].tolist() == [3]  # eval_every=None: the final maps only


def test_init_sets_the_start_and_the_grid(conv_model):
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    init = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(3))
    a, h = optimise_attribution(conv_model, x, init=init, steps=0)
    up = F.interpolate(init[:, None], size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(a, up)
    assert h["loss"].shape == (0, 2)
    a1, _ = optimise_attribution(conv_model, x, init=init, steps=2, samples=2)
    assert not torch.equal(a1, up) and torch.equal(init, init.clone())  # init itself is never changed


def test_the_optimised_map_beats_a_random_one():
    model, x = patch_model(), patch_images()
    a, h = optimise_attribution(model, x, steps=60, samples=6, lr=0.1, eval_every=20, curve_steps=16,
                                generator=torch.Generator().manual_seed(0))
    random_map = torch.rand(a.shape, generator=torch.Generator().manual_seed(1))
    random_faith = faithfulness(model, x, random_map, steps=16)
    final = faithfulness(model, x, a, steps=16)
    torch.testing.assert_close(final, h["faithfulness"][-1])
    assert (final > random_faith + 0.2).all(), (final, random_faith)
    assert h["faithfulness"][-1].mean() > h["faithfulness"][0].mean() + 0.2
    assert h["loss"][-10:].mean() < h["loss"][:10].mean()
    # the patch the model reads is ranked first
    top = a.flatten(1).topk(9).indices
    patch = torch.zeros(8, 8, dtype=torch.bool)
    patch[2:5, 3:6] = True
    assert patch.flatten()[top].float().mean() > 0.7


def test_a_seeded_generator_makes_it_reproducible(conv_model):
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    run = lambda seed: optimise_attribution(conv_model, x, resolution=6, steps=6, samples=3, eval_every=3,
                                            generator=torch.Generator().manual_seed(seed))
    (a1, h1), (a2, h2), (a3, _) = run(0), run(0), run(1)
    assert torch.equal(a1, a2) and torch.equal(h1["loss"], h2["loss"])
    assert torch.equal(h1["faithfulness"], h2["faithfulness"])
    assert not torch.equal(a1, a3)


def test_the_model_is_left_as_it_was(conv_model):
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 64, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    optimise_attribution(model, x, steps=2, samples=2)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no BN statistics moved


class ZeroLogitsRaNEM(RaNEM):
    """RaNEM.loss with every attribution logit 0 and no decoder: what the optimisation's first step sees."""

    def __init__(self, classifier):
        nn.Module.__init__(self)
        self.encoder = nn.Module()
        self.encoder.classifier = classifier  # RaNEM.classifier reads it here
        self.substrates = ("zeros", "blur", "noise")

    def forward(self, x):
        return self.classifier(x), torch.zeros(x.shape[0], *x.shape[-2:])


@pytest.mark.parametrize("mode", ["input", "batch"])
def test_the_first_step_loss_is_ranem_loss(conv_model, mode):
    """The objective is RaNEM.loss's: for the same logits and the same draws, the same number."""
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    loss, _ = ZeroLogitsRaNEM(conv_model).loss(x, generator=torch.Generator().manual_seed(7), samples=4,
                                               substrate_mode=mode)
    _, h = optimise_attribution(conv_model, x, steps=1, samples=4, substrate_mode=mode,
                                generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(h["loss"][0].mean(), loss.detach())


def reference_loop(model, x, *, steps, samples, lr, generator, resolution=None):
    """A slow per-image loop with its own Gumbel-top-k mask (zeros substrate), drawing the same
    random numbers in the same order as the batched function: k for all images, the substrate
    choice of every copy, then the Gumbel noise of every copy."""
    b, _, h, w = x.shape
    d = h * w
    with torch.no_grad():
        target = model(x).argmax(1)
    grid = (h, w) if resolution is None else (resolution, resolution)
    params = [torch.zeros(*grid, dtype=x.dtype, requires_grad=True) for _ in range(b)]
    optimisers = [torch.optim.Adam([p], lr=lr) for p in params]
    losses = []
    for _ in range(steps):
        k = ops.sample_k(d, samples, generator=generator, batch=b)
        torch.randint(1, (b * samples,), generator=generator)  # which substrate (one to choose from)
        noise = ops.gumbel((b * samples, d), generator=generator, dtype=x.dtype)
        step_losses = []
        for i in range(b):
            a = params[i] if grid == (h, w) else F.interpolate(params[i][None, None], size=(h, w), mode="bilinear",
                                                               align_corners=False)[0, 0]
            s = a.flatten() - torch.logsumexp(a.flatten(), 0) + noise[i * samples:(i + 1) * samples]
            order = s.detach().argsort(dim=1, descending=True)
            hard = torch.zeros_like(s)
            kept = []
            for j in range(samples):
                hard[j, order[j, :k[i, j]]] = 1.0
                kept.append(order[j, k[i, j] - 1])
            threshold = s.gather(1, torch.stack(kept)[:, None])
            soft = torch.sigmoid(s - threshold)
            mask = (hard + soft - soft.detach()).view(samples, 1, h, w)
            masked = x[i:i + 1] * mask  # zeros substrate
            p = model(masked).float().softmax(1)[:, target[i]]
            loss = (1 - p).mean()
            optimisers[i].zero_grad()
            loss.backward()
            optimisers[i].step()
            step_losses.append(loss.detach())
        losses.append(torch.stack(step_losses))
    maps = torch.stack([p.detach() for p in params])
    if grid != (h, w):
        maps = F.interpolate(maps[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return maps, torch.stack(losses)


@pytest.mark.parametrize("resolution", [None, 4])
def test_the_batched_function_equals_a_slow_per_image_loop(resolution):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 3)).double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    options = dict(steps=5, samples=3, lr=0.05, resolution=resolution)
    a, h = optimise_attribution(model, x, substrates=("zeros",), generator=torch.Generator().manual_seed(2),
                                **options)
    ref_a, ref_loss = reference_loop(model, x, generator=torch.Generator().manual_seed(2), **options)
    torch.testing.assert_close(h["loss"], ref_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a, ref_a, rtol=1e-6, atol=1e-7)


def test_the_top_level_name_is_the_function():
    assert ranem.optimise_attribution is optimise_attribution


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(model=lambda x: x), TypeError, "model must be a torch.nn.Module"),
    (dict(x=torch.randn(3, 8, 8)), ValueError, "x must"),
    (dict(x=torch.full((1, 3, 8, 8), float("nan"))), ValueError, "x must be finite"),
    (dict(steps=-1), ValueError, "steps must be an int >= 0"),
    (dict(steps=2.5), ValueError, "steps must be an int"),
    (dict(samples=0), ValueError, "samples must be an int >= 1"),
    (dict(lr=0), ValueError, "lr must be a finite number > 0"),
    (dict(lr=float("nan")), ValueError, "lr must be"),
    (dict(resolution=0), ValueError, "resolution must be an int >= 1"),
    (dict(resolution=9), ValueError, "resolution must be at most the image's"),
    (dict(resolution="coarse"), ValueError, "resolution must be None, an int or a pair"),
    (dict(resolution=(2, 2, 2)), ValueError, "resolution must be an int or a pair"),
    (dict(init=torch.zeros(2, 4, 4)), ValueError, "init must be a float tensor"),
    (dict(init=[[0.0]]), TypeError, "init must be a torch.Tensor"),
    (dict(init=torch.zeros(1, 4, 4), resolution=2), ValueError, "init has the grid"),
    (dict(init=torch.full((1, 4, 4), float("inf"))), ValueError, "init must be finite"),
    (dict(substrates=()), ValueError, "substrates must be a non-empty sequence"),
    (dict(substrates=("zeros", "grey")), ValueError, "substrates must be"),
    (dict(substrates=3), TypeError, "substrates must be a name or a sequence"),
    (dict(substrate_mode="image"), ValueError, "substrate_mode must be one of 'input', 'batch'"),
    (dict(stratified="yes"), TypeError, "stratified must be True or False"),
    (dict(eval_every=0), ValueError, "eval_every must be an int >= 1"),
    (dict(curve_steps=0), ValueError, "curve_steps must be an int >= 1"),
    (dict(batch_size=0), ValueError, "batch_size must be an int >= 1"),
    (dict(generator=0), TypeError, "generator must be None or a torch.Generator"),
    (dict(progress="no"), TypeError, "progress must be True or False"),
    (dict(target=7), ValueError, "target must lie in"),
    (dict(target=torch.tensor([0.5])), TypeError, "target must hold integer class indices"),
])
def test_bad_arguments_are_refused_with_their_name(kwargs, error, match):
    args = dict(model=patch_model(), x=patch_images(1), steps=1, samples=2)
    args.update(kwargs)
    model, x = args.pop("model"), args.pop("x")
    with pytest.raises(error, match=match):
        optimise_attribution(model, x, **args)


def test_a_single_substrate_name_and_batch_mode_work():
    model, x = patch_model(), patch_images(2)
    a, _ = optimise_attribution(model, x, substrates="blur", substrate_mode="batch", stratified=False, steps=2,
                                samples=2, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 8, 8) and torch.isfinite(a).all()
