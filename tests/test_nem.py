"""Tests of ranem.nem: encoder adapters over timm families, the decoder, RaNEM/NEMt, persistence."""
import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vgg import VGG

from ranem import ops
from ranem.nem import NEM, NEMt, RaNEM, RaNEMInsDel, classifier_fingerprint


def _vgg(**kw):
    # A VGG built by timm's own class, shrunk so the test stays fast.
    return VGG([8, "M", 16, "M", 16, "M", 32, "M", 32, "M"], num_classes=5, mlp_ratio=0.25)


FAMILIES = {
    "resnet": lambda: timm.create_model("test_resnet", num_classes=5),
    "convnext": lambda: timm.create_model("test_convnext", num_classes=5),
    "vgg": _vgg,
    "vit": lambda: timm.create_model("test_vit", num_classes=5, img_size=32, patch_size=8, dynamic_img_size=True),
}


def _model(family, seed=0):
    torch.manual_seed(seed)
    return FAMILIES[family]().eval()


@pytest.fixture(scope="module")
def resnet():
    return _model("resnet")


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("size", [32, 48])
def test_explanation_is_one_logit_per_pixel_and_logits_are_the_classifiers(family, size):
    clf = _model(family)
    nem = RaNEM(clf)
    x = torch.randn(2, 3, size, size)
    logits, a = nem.predict(x)
    assert a.shape == (2, size, size) and a.dtype == torch.float32 and torch.isfinite(a).all()
    # the one forward that feeds the decoder gives exactly the classifier's own prediction
    torch.testing.assert_close(logits, clf(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(nem.explain(x), a)


@pytest.mark.parametrize("tokens", [dict(class_token=True, reg_tokens=2), dict(class_token=False, global_pool="avg")])
def test_vit_prefix_tokens_are_dropped(tokens):
    torch.manual_seed(0)
    clf = timm.create_model("test_vit", num_classes=5, img_size=32, patch_size=8, **tokens).eval()
    nem = RaNEM(clf)
    assert nem.encoder.strides == [8.0] * len(nem.encoder.strides)
    _, feats = nem.encoder(torch.randn(1, 3, 32, 32))
    assert all(f.shape[-2:] == (4, 4) for f in feats)  # 16 patch tokens, no prefix token left
    assert nem.explain(torch.randn(3, 3, 32, 32)).shape == (3, 32, 32)


def test_hooks_fallback_reads_the_same_maps_as_forward_intermediates(resnet):
    layers = [f["module"] for f in resnet.feature_info]
    via_intermediates, via_hooks = RaNEM(resnet), RaNEM(resnet, layers=layers)
    x = torch.randn(2, 3, 32, 32)
    l1, f1 = via_intermediates.encoder(x)
    l2, f2 = via_hooks.encoder(x)
    torch.testing.assert_close(l1, l2)
    assert len(f1) == len(f2)
    for a, b in zip(f1, f2):
        torch.testing.assert_close(a, b)


def test_any_module_works_with_named_layers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    net.ranem_info = {"image_size": 32}
    nem = NEMt(net, layers=["1", "3", "5"])
    assert nem.encoder.strides == [4.0, 2.0, 1.0]
    assert nem.explain(torch.randn(2, 3, 32, 32)).shape == (2, 32, 32)


def test_bad_models_and_inputs_fail_clearly(resnet):
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match="layers="):
        RaNEM(plain)
    with pytest.raises(TypeError, match="nn.Module"):
        RaNEM("resnet")
    with pytest.raises(ValueError, match="not found"):
        RaNEM(plain, layers=["nope"])
    with pytest.raises(TypeError, match="feature maps"):
        RaNEM(plain, layers=["3"])  # the Linear layer outputs (B, 2)
    nem = RaNEM(resnet)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        nem.explain(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        nem.explain(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="float"):  # uint8 images are normalised; other integers are refused
        nem.explain(torch.zeros(1, 3, 32, 32, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        nem.explain([[0.0]])
    with pytest.raises(ValueError, match="NaN"):
        nem.explain(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="substrates"):
        RaNEM(resnet, substrates=("zeros", "mean"))
    with pytest.raises(ValueError, match="area_weight"):
        NEMt(resnet, area_weight=-1.0)


def test_attribute_is_captum_shaped_and_target_must_be_the_prediction(resnet):
    nem = RaNEM(resnet)
    x = torch.randn(3, 3, 32, 32)
    attr = nem.attribute(x)
    assert attr.shape == x.shape
    assert torch.equal(attr[:, 0], nem.explain(x)) and torch.equal(attr[:, 2], attr[:, 0])
    top1 = resnet(x).argmax(1)
    assert torch.equal(nem.attribute(x, target=top1), attr)
    with pytest.raises(ValueError, match="top-1"):
        nem.attribute(x, target=(top1 + 1) % 5)


def test_classifier_stays_frozen_under_train_mode(resnet):
    nem = RaNEM(resnet)
    nem.train()
    assert not resnet.training and nem.decoder.training
    assert not any(p.requires_grad for p in resnet.parameters())
    assert all(p.requires_grad for p in nem.decoder.parameters())


def test_gradients_reach_every_decoder_parameter(resnet):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    for nem in (RaNEM(resnet), NEMt(resnet, substrates=("blur",))):
        nem.train()
        loss, _ = nem.loss(x, generator=torch.Generator().manual_seed(0), samples=3)
        loss.backward()
        shift_invariant = {"head.bias", "patch.bias"} if isinstance(nem, RaNEM) else set()
        for name, p in nem.decoder.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            if name in shift_invariant:
                # top-k of a + const is top-k of a: a constant shift of the logits gets no gradient
                assert p.grad.abs().max() < 1e-6, name
            else:
                assert p.grad.abs().max() > 0, name
        assert all(p.grad is None for p in resnet.parameters())


def test_samples_go_through_the_classifier_as_one_batch(resnet):
    nem = RaNEM(resnet)
    rows = []
    first_conv = next(m for m in resnet.modules() if isinstance(m, nn.Conv2d))
    handle = first_conv.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    try:
        nem.loss(torch.randn(5, 3, 32, 32), generator=torch.Generator().manual_seed(0), samples=6)
    finally:
        handle.remove()
    assert rows == [5, 30]  # one clean forward (logits + features), one batch of S*B masked inputs


def test_insdel_loss_keeps_and_removes_the_same_draw(resnet):
    nem = RaNEMInsDel(resnet, substrates=("zeros",)).eval()  # eval: no dropout, so both passes agree
    x = torch.randn(3, 3, 32, 32)
    rows = []
    first_conv = next(m for m in resnet.modules() if isinstance(m, nn.Conv2d))
    handle = first_conv.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    try:
        loss, stats = nem.loss(x, generator=torch.Generator().manual_seed(0), samples=4)
    finally:
        handle.remove()
    assert rows == [3, 12]  # as many classifier inputs as Ra-NEM with S = 4: 2 draws x (keep, remove)
    # The same draws, by hand: keep the top k of a + g, or remove exactly those pixels.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        logits, a = nem(x)
        k = ops.sample_k(32 * 32, 2, stratified=True, generator=g, batch=3).reshape(-1)
        r = nem.substrate_batch(x, 2, "input", g)
        xr = x.repeat_interleave(2, 0)
        kept, mask = ops.omega(xr, a.repeat_interleave(2, 0), k, r, generator=g)
        removed = xr * (1 - mask[:, None])  # zeros substrate
        c = logits.argmax(1).repeat_interleave(2)
        p = lambda z: F.softmax(resnet(z), 1).gather(1, c[:, None]).squeeze(1)  # noqa: E731
        expected = 0.5 * ((1 - p(kept)).mean() + p(removed).mean())
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert stats["p_removed"] == pytest.approx(p(removed).mean().item(), abs=1e-5)
    assert mask.sum((1, 2)).tolist() == k.tolist()
    with pytest.raises(ValueError, match="samples must be >= 2"):
        nem.loss(x, samples=1)


def test_insdel_gradients_reach_the_decoder(resnet):
    nem = RaNEMInsDel(resnet)
    loss, _ = nem.loss(torch.randn(2, 3, 32, 32), generator=torch.Generator().manual_seed(1), samples=2)
    loss.backward()
    assert nem.decoder.head.weight.grad.abs().max() > 0


def test_substrate_per_input_or_per_batch(resnet):
    nem = RaNEM(resnet, substrates=("zeros", "blur"))
    x = torch.randn(4, 3, 16, 16)
    refs = torch.stack([ops.zeros(x), ops.blur(x)])  # (2, B, C, H, W)
    r = nem.substrate_batch(x, 8, "input", torch.Generator().manual_seed(0)).view(4, 8, 3, 16, 16)
    which = [[int(torch.equal(r[b, s], refs[1, b])) for s in range(8)] for b in range(4)]
    for b in range(4):
        for s in range(8):
            assert torch.equal(r[b, s], refs[which[b][s], b])
    assert 0 < sum(map(sum, which)) < 32  # both substrates drawn
    for seed in range(4):
        rb = nem.substrate_batch(x, 3, "batch", torch.Generator().manual_seed(seed)).view(4, 3, 3, 16, 16)
        assert torch.equal(rb, refs[0][:, None].expand_as(rb)) or torch.equal(rb, refs[1][:, None].expand_as(rb))
    with pytest.raises(ValueError, match="substrate_mode"):
        nem.substrate_batch(x, 2, "image")


def test_nemt_loss_closed_form_for_a_constant_mask(resnet):
    nem = NEMt(resnet, area_weight=0.3)
    nem.eval()
    with torch.no_grad():
        nem.decoder.patch.weight.zero_()
        nem.decoder.patch.bias.fill_(0.4)  # logits 0.4 everywhere -> m = sigmoid(0.4)
    x = torch.randn(3, 3, 32, 32)
    loss, stats = nem.loss(x)
    m = torch.sigmoid(torch.tensor(0.4))
    p = F.softmax(resnet(x * m), 1)  # zeros substrate
    expected = (1 - p.gather(1, resnet(x).argmax(1, keepdim=True))).mean() + 0.3 * m
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert stats["mask_mean"] == pytest.approx(m.item(), abs=1e-6)


def test_save_load_round_trip(tmp_path, resnet):
    torch.manual_seed(1)
    for cls, kwargs in ((RaNEM, {}), (NEMt, {"area_weight": 0.05})):
        nem = cls(resnet, **kwargs)
        with torch.no_grad():  # non-trivial BN statistics and output layer, so they must be saved too
            nem.decoder.patch.weight.fill_(1.5)
            for m in nem.decoder.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_()
        nem.history = {"epoch_loss": [0.5, 0.4], "snapshots": torch.randn(2, 1, 4, 4)}
        path = nem.save(tmp_path / f"{cls.kind}.safetensors")
        assert path.with_suffix(".json").is_file() and not list(tmp_path.glob("*.tmp"))
        back = NEM.load(path, resnet)
        assert type(back) is cls and back.config == nem.config
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(back.explain(x), nem.explain(x))
        assert back.history["epoch_loss"] == [0.5, 0.4]
        assert torch.equal(back.history["snapshots"], nem.history["snapshots"])
    with pytest.raises(ValueError, match="nemt"):
        RaNEM.load(tmp_path / "nemt.safetensors", resnet)


def test_load_refuses_another_classifier(tmp_path, resnet):
    path = RaNEM(resnet).save(tmp_path / "n.safetensors")
    other = _model("resnet", seed=1)  # same architecture, other weights
    assert classifier_fingerprint(other)["name"] == classifier_fingerprint(resnet)["name"]
    with pytest.raises(ValueError, match="trained for classifier"):
        RaNEM.load(path, other)
    with pytest.raises(ValueError, match="trained for classifier"):
        RaNEM.load(path, _model("convnext"))
    assert isinstance(RaNEM.load(path, other, check=False), RaNEM)  # e.g. a randomisation test
    copied = copy.deepcopy(resnet)
    assert isinstance(RaNEM.load(path, copied), RaNEM)  # same weights, another object: accepted
    with pytest.raises(FileNotFoundError):
        RaNEM.load(tmp_path / "missing.safetensors", resnet)


# ----------------------------------------------------------------------------- the decoder's design
@pytest.mark.parametrize("upsample", ["bilinear", "transposed"])
@pytest.mark.parametrize("output_stride", [1, 2, 4, 8, 32])
def test_every_decoder_design_gives_one_logit_per_input_pixel(resnet, upsample, output_stride):
    nem = RaNEM(resnet, upsample=upsample, output_stride=output_stride)
    x = torch.randn(2, 3, 40, 56)
    assert nem.explain(x).shape == (2, 40, 56)
    assert nem.config["upsample"] == upsample and nem.config["output_stride"] == output_stride


def test_output_stride_drops_the_fine_blocks_and_their_skips(resnet):
    full, coarse = RaNEM(resnet, output_stride=1), RaNEM(resnet, output_stride=4)
    # resnet10t: head at stride 32, skips at 16, 8, 4, 2: stride 4 keeps three blocks and skips.
    assert len(full.decoder.blocks) == 5 and len(coarse.decoder.blocks) == 3
    _, feats = coarse.encoder(torch.randn(1, 3, 64, 64))
    grid = coarse.decoder.patch(coarse.decoder.head(_run_blocks(coarse.decoder, feats)))
    assert grid.shape[-2:] == (16, 16)  # 64 px / 4


def _run_blocks(decoder, feats):
    x, skips = feats[0], feats[decoder.n_head:decoder.n_head + decoder.n_skips]
    for i, block in enumerate(decoder.blocks):
        x = block(x, skips[i] if i < len(skips) else None)
    return x


def test_logits_are_resized_after_the_head_which_equals_resizing_the_features(resnet):
    # The head (1x1 conv) and the patch layer are affine per pixel and bilinear weights sum to 1, so
    # they commute with the resize: the cheap order (one channel) gives the costly order's map.
    nem = RaNEM(resnet, output_stride=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _, feats = nem.encoder(x)
        features = F.interpolate(_run_blocks(nem.decoder, feats), size=(64, 64), mode="bilinear", align_corners=False)
        expected = nem.decoder.patch(nem.decoder.head(features)).squeeze(1)
    torch.testing.assert_close(nem.explain(x), expected, rtol=1e-5, atol=1e-5)


def test_bilinear_upsampling_leaves_no_checkerboard_where_transposed_convs_do():
    # A constant map stays constant through 1x1 convs, BN and bilinear upsampling; a stride-2
    # transposed conv alternates two sums of its kernel, a period-2 pattern (the checkerboard).
    from ranem.nem import DecoderBlock
    torch.manual_seed(0)
    x = torch.ones(1, 8, 8, 8)
    for upsample, constant in (("bilinear", True), ("transposed", False)):
        up = DecoderBlock(8, 0, 4, upsample, 0.0).eval().up
        with torch.no_grad():
            inner = up(x)[..., 2:-2, 2:-2]  # away from the zero-padded border
        spread = (inner - inner.mean((-2, -1), keepdim=True)).abs().max().item()
        assert (spread < 1e-5) == constant, (upsample, spread)


@pytest.mark.parametrize("options,match", [
    ({"upsample": "nearest"}, "upsample"), ({"output_stride": 3}, "power of two"),
    ({"output_stride": 64}, "power of two"), ({"output_stride": 0}, "output_stride"),
    ({"output_stride": 2.0}, "output_stride")])
def test_bad_decoder_designs_are_refused(resnet, options, match):
    with pytest.raises(ValueError, match=match):
        RaNEM(resnet, **options)


def test_format_1_files_load_with_the_decoder_they_were_trained_with(tmp_path, resnet, monkeypatch):
    # Files saved before the decoder had options hold transposed convs up to full resolution and
    # configs without the new keys: loading must rebuild that decoder, not today's default.
    from ranem import nem as nem_module
    old = RaNEM(resnet, upsample="transposed", output_stride=1, decoder_channels=(256, 128, 64, 32, 16))
    for key in ("upsample", "output_stride"):
        del old.config[key]
    monkeypatch.setattr(nem_module, "FORMAT", "ranem-nem/1")
    path = old.save(tmp_path / "old.safetensors")
    monkeypatch.undo()
    back = NEM.load(path, resnet)
    assert back.config["upsample"] == "transposed" and back.config["output_stride"] == 1
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back.explain(x), old.explain(x))


def test_one_image_runs_the_decoder_on_one_thread_with_the_same_maps(monkeypatch):
    # Why: a single image's decoder ops are too small to pay for waking a second thread. The maps
    # must not depend on it, and the caller's thread count must come back, also after an error.
    nem = RaNEM(_model("resnet")).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    seen = []
    real = nem.decoder.head.forward
    monkeypatch.setattr(nem.decoder.head, "forward", lambda t: (seen.append(torch.get_num_threads()), real(t))[1])
    torch.set_num_threads(2)
    try:
        one = nem.explain(x)
        pair = nem.explain(torch.cat([x, x]))
        assert seen == [1, 2] and torch.get_num_threads() == 2
        torch.testing.assert_close(one[0], pair[0], rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(nem.decoder.head, "forward", lambda t: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            nem.explain(x)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
