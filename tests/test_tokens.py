"""Tests of ranem.tokens: the operator on the token axis, token curves, the task, the classifiers,
the token NEMs and the token baselines.

Each behaviour is checked against an independent computation: the image operator and a float64
Jacobian written out in tests/test_ops.py, per-sequence Python loops for the curves and occlusion,
a hand count of the planted tokens, autograd by hand for Saliency, IG's completeness.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ranem import ops
from ranem.metrics import auc
from ranem.tokens import (CNNClassifier, TokenNEMt, TokenRaNEM, TransformerClassifier, Vocab, evidence_task,
                          mix_embeddings, omega_tokens, token_deletion_curve, token_faithfulness,
                          token_insertion_curve, token_substrate, train_classifier)
from ranem.tokens.baselines import token_integrated_gradients, token_occlusion, token_random, token_saliency
from test_ops import _reference_gradient

VOCAB = Vocab(size=12)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _ids(b=3, length=10, seed=0):
    return torch.randint(VOCAB.first_regular, VOCAB.size, (b, length), generator=_gen(seed))


@pytest.fixture(scope="module")
def task():
    return evidence_task(64, length=12, classes=3, per_class=2, evidence=3, distractors=1, fillers=6, seed=0)


@pytest.fixture(scope="module")
def transformer(task):
    torch.manual_seed(0)
    model = TransformerClassifier(task.vocab, 3, 12, dim=16, heads=2, layers=2, ff=32)
    train_classifier(model, task.ids, task.labels, epochs=2, batch_size=32, progress=False)
    return model.eval()


# ----------------------------------------------------------------------------- the operator
@pytest.mark.parametrize("substrate", ["mask", "pad", "random", "delete"])
@pytest.mark.parametrize("noise", [True, False])
def test_token_operator_keeps_exactly_k_tokens(substrate, noise):
    ids = _ids(4, 10)
    scores = torch.randn(4, 10, generator=_gen(1))
    k = torch.tensor([1, 3, 7, 10])
    masked, r, mask, order = omega_tokens(ids, scores, k, substrate, VOCAB, generator=_gen(2), noise=noise)
    assert mask.sum(1).tolist() == k.tolist() and set(mask.unique().tolist()) <= {0.0, 1.0}
    for row in range(4):
        kept = [int(t) for t, m in zip(ids[row], mask[row]) if m]
        if substrate == "delete":  # the kept tokens close up in their order, padding after them
            assert masked[row].tolist() == kept + [VOCAB.pad_id] * (10 - len(kept))
        else:
            expected = [int(t) if m else int(s) for t, m, s in zip(ids[row], mask[row], r[row])]
            assert masked[row].tolist() == expected
    if substrate == "mask":
        assert (r == VOCAB.mask_id).all()
    if substrate == "random":
        assert (r >= VOCAB.first_regular).all()
    if not noise:  # the deterministic top-k of the scores
        top = scores.argsort(dim=1, descending=True, stable=True)
        for row in range(4):
            assert set(torch.nonzero(mask[row])[:, 0].tolist()) == set(top[row, :k[row]].tolist())


def test_substrates_leave_padding_alone_and_delete_never_moves_it_forward():
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 4]])
    for name in ("mask", "random", "pad", "delete"):
        r = token_substrate(name, ids, VOCAB, _gen(0))
        assert (r[0, 3:] == 0).all()
    # Keep positions 0 and 3 (a pad) of row 0: the pad must not land before a later real token.
    scores = torch.tensor([[5.0, 0, 0, 4, 0], [0, 5, 0, 4, 0]])
    masked, _, _, _ = omega_tokens(ids, scores, 2, "delete", VOCAB, noise=False)
    assert masked.tolist() == [[5, 0, 0, 0, 0], [9, 11, 0, 0, 0]]


@pytest.mark.parametrize("per_row", [False, True])
def test_token_gradients_match_the_image_operator_and_its_formula(per_row):
    b, length = 3, 12
    a = (torch.randn(b, length, dtype=torch.float64, generator=_gen(5)) * 2).requires_grad_(True)
    k = torch.tensor([1, 6, 12]) if per_row else 5
    ids = _ids(b, length, seed=3)
    _, _, mask, _ = omega_tokens(ids, a, k, "mask", VOCAB, generator=_gen(7))
    w = torch.randn(b, length, dtype=torch.float64, generator=_gen(8))
    (mask * w).sum().backward()
    # The image operator on a 1 x L "image" with the same noise (a tensor R draws nothing).
    a_img = a.detach().clone().view(b, 1, length).requires_grad_(True)
    x, r = torch.ones(b, 1, 1, length, dtype=torch.float64), torch.zeros(b, 1, 1, length, dtype=torch.float64)
    _, m_img = ops.omega(x, a_img, k, r, generator=_gen(7))
    (m_img.view(b, length) * w).sum().backward()
    assert torch.equal(mask.detach(), m_img.detach().view(b, length))
    torch.testing.assert_close(a.grad, a_img.grad.view(b, length), rtol=1e-12, atol=1e-14)
    # ...and the float64 Jacobian of Algorithm 1's sigmoid relaxation, written out independently.
    g = ops.gumbel((b, length), generator=_gen(7), dtype=torch.float64).numpy()
    ks = k.tolist() if per_row else [k] * b
    expected = _reference_gradient(a.detach().numpy(), g, ks, w.numpy())
    np.testing.assert_allclose(a.grad.numpy(), expected, rtol=1e-9, atol=1e-12)
    assert np.abs(expected).sum() > 0


@pytest.mark.parametrize("substrate", ["mask", "random", "delete"])
def test_mixed_embeddings_equal_the_embeddings_of_the_masked_ids(substrate):
    emb = torch.nn.Embedding(VOCAB.size, 5)
    ids = _ids(4, 9)
    scores = torch.randn(4, 9, generator=_gen(1), requires_grad=True)
    masked, r, mask, order = omega_tokens(ids, scores, torch.tensor([1, 4, 8, 9]), substrate, VOCAB,
                                          generator=_gen(3))
    mixed = mix_embeddings(emb(ids), emb(r), mask, order)
    assert torch.equal(mixed, emb(masked))
    mixed.sum().backward()
    assert scores.grad.abs().sum() > 0  # straight-through: the ids' choice reaches the scores


def test_topk_mask_refuses_bad_input():
    with pytest.raises(ValueError, match=r"scores must be a non-empty \(B, D\)"):
        ops.topk_mask(torch.randn(2, 3, 4), 2)
    with pytest.raises(ValueError, match="k must be in"):
        ops.topk_mask(torch.randn(2, 4), 5)
    with pytest.raises(TypeError, match="scores must be a torch.Tensor"):
        ops.topk_mask([[1.0, 2.0]], 1)


def test_token_operator_refuses_bad_input():
    ids = _ids(2, 6)
    s = torch.randn(2, 6)
    with pytest.raises(ValueError, match="ids must be an integer tensor"):
        omega_tokens(ids.float(), s, 2, "mask", VOCAB)
    with pytest.raises(ValueError, match=r"ids must hold ids in \[0, 12\)"):
        omega_tokens(ids + 20, s, 2, "mask", VOCAB)
    with pytest.raises(ValueError, match=r"scores must have shape \(B, L\)"):
        omega_tokens(ids, s[:, :5], 2, "mask", VOCAB)
    with pytest.raises(ValueError, match="k must be in"):
        omega_tokens(ids, s, 7, "mask", VOCAB)
    with pytest.raises(ValueError, match="substrate must be one of"):
        omega_tokens(ids, s, 2, "blur", VOCAB)
    with pytest.raises(TypeError, match="vocab must be"):
        omega_tokens(ids, s, 2, "mask", 12)
    with pytest.raises(ValueError, match="pad_id, mask_id < first_regular < size"):
        Vocab(size=2)


# ----------------------------------------------------------------------------- curves
def _slow_curve(model, ids, attribution, vocab, kind, substrate, counts):
    """One sequence and one count at a time, with the masking written out in Python."""
    out = torch.zeros(ids.shape[0], len(counts))
    with torch.no_grad():
        for b in range(ids.shape[0]):
            seq = ids[b].tolist()
            c = int(model(ids[b:b + 1]).argmax())
            order = sorted(range(len(seq)), key=lambda i: (-float(attribution[b, i]), i))
            for j, k in enumerate(counts):
                top = set(order[:k])
                keep = [(i in top) == (kind == "insertion") for i in range(len(seq))]
                if substrate == "delete":
                    kept = [t for t, kk in zip(seq, keep) if kk and t != vocab.pad_id]
                    new = kept + [vocab.pad_id] * (len(seq) - len(kept))
                else:
                    fill = vocab.mask_id if substrate == "mask" else vocab.pad_id
                    new = [t if kk or t == vocab.pad_id else fill for t, kk in zip(seq, keep)]
                p = F.softmax(model(torch.tensor([new])), 1)[0, c]
                out[b, j] = p
    return out


@pytest.mark.parametrize("substrate", ["mask", "pad", "delete"])
def test_token_curves_equal_a_slow_reference_loop(transformer, task, substrate):
    ids = task.ids[:5].clone()
    ids[1, 9:] = task.vocab.pad_id  # a padded sequence too
    attribution = torch.randn(5, 12, generator=_gen(4))
    attribution[2, :4] = 0.5  # ties: stable order
    counts = list(range(13))
    ins = token_insertion_curve(transformer, ids, attribution, task.vocab, substrate=substrate, batch_size=7)
    dele = token_deletion_curve(transformer, ids, attribution, task.vocab, substrate=substrate, batch_size=7)
    torch.testing.assert_close(ins, _slow_curve(transformer, ids, attribution, task.vocab, "insertion", substrate,
                                                counts), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dele, _slow_curve(transformer, ids, attribution, task.vocab, "deletion", substrate,
                                                 counts), rtol=1e-4, atol=1e-5)
    faith, i2, d2 = token_faithfulness(transformer, ids, attribution, task.vocab, insertion_substrate=substrate,
                                       deletion_substrate=substrate, return_curves=True)
    torch.testing.assert_close(faith, auc(ins) - auc(dele))
    stepped = token_insertion_curve(transformer, ids, attribution, task.vocab, steps=4, substrate=substrate)
    torch.testing.assert_close(stepped, ins[:, [0, 3, 6, 9, 12]])


def test_token_curves_refuse_bad_input(transformer, task):
    ids = task.ids[:2]
    with pytest.raises(ValueError, match=r"attribution must have shape \(B, L\)"):
        token_faithfulness(transformer, ids, torch.zeros(2, 11), task.vocab)
    with pytest.raises(ValueError, match="attribution must be finite"):
        token_faithfulness(transformer, ids, torch.full((2, 12), float("nan")), task.vocab)
    with pytest.raises(ValueError, match="substrate must be one of"):
        token_faithfulness(transformer, ids, torch.zeros(2, 12), task.vocab, insertion_substrate="blur")
    with pytest.raises(TypeError, match="ids must be a torch.Tensor"):
        token_faithfulness(transformer, ids.tolist(), torch.zeros(2, 12), task.vocab)


# ----------------------------------------------------------------------------- task and classifiers
def test_the_planted_tokens_decide_the_class():
    t = evidence_task(400, length=20, classes=4, per_class=3, evidence=3, distractors=2, seed=5)
    assert t.ids.shape == (400, 20) and torch.bincount(t.labels).tolist() == [100] * 4
    first = t.vocab.first_regular
    for row in range(400):
        seq = t.ids[row].tolist()
        counts = [sum(first + 3 * c <= s < first + 3 * (c + 1) for s in seq) for c in range(4)]
        assert counts[int(t.labels[row])] == 3 and sorted(counts)[-2] == 2  # 3 evidence vs 2 distractors
        c = int(t.labels[row])
        ev = [i for i, s in enumerate(seq) if first + 3 * c <= s < first + 3 * (c + 1)]
        assert ev == torch.nonzero(t.evidence[row])[:, 0].tolist()
        assert not (t.evidence[row] & t.distractor[row]).any() and int(t.distractor[row].sum()) == 2
    assert torch.equal(evidence_task(50, seed=3).ids, evidence_task(50, seed=3).ids)
    with pytest.raises(ValueError, match="distractors must be an int in"):
        evidence_task(10, evidence=2, distractors=2)


@pytest.mark.parametrize("cls", [TransformerClassifier, CNNClassifier])
def test_classifiers_give_finite_logits_even_for_all_padding(cls):
    model = cls(VOCAB, 3, 8).eval()
    ids = torch.tensor([[0] * 8, [5, 6, 0, 0, 0, 0, 0, 0]])
    out = model(ids)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    # Padding is absent: appending more of it changes nothing.
    short = model(torch.tensor([[5, 6, 7, 0]]))
    torch.testing.assert_close(short, model(torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0]])), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- NEMs
@pytest.mark.slow
def test_ranem_trains_on_a_tiny_transformer_for_one_epoch(transformer, task, tmp_path):
    nem = TokenRaNEM(transformer)
    assert nem.encoder.embedding_name == "embed" and len(nem.encoder.layers) == 2
    before = {k: v.clone() for k, v in nem.decoder.state_dict().items()}
    h = nem.fit(task.ids, epochs=1, samples=4, batch_size=16, val_data=task.ids[:8], progress=False, d0=1e-3)
    assert len(h["epoch_loss"]) == 1 and len(h["step_loss"]) == 4 and len(h["val_faithfulness"]) == 2
    assert all(np.isfinite(h["step_loss"])) and 0 <= h["epoch_loss"][0] <= 1
    assert any(not torch.equal(before[k], v) for k, v in nem.decoder.state_dict().items())
    assert all(not p.requires_grad for p in transformer.parameters())
    a = nem.explain(task.ids[:5])
    assert a.shape == (5, 12) and torch.isfinite(a).all()
    nem.save(tmp_path / "nem.safetensors")
    again = TokenRaNEM.load(tmp_path / "nem.safetensors", transformer)
    torch.testing.assert_close(again.explain(task.ids[:5]), a)


def test_ranem_loss_pushes_all_samples_through_the_classifier_at_once(transformer, task):
    nem = TokenRaNEM(transformer, substrates=("delete",)).eval()
    rows = []
    handle = transformer.embed.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    try:
        loss, stats = nem.loss(task.ids[:5], generator=_gen(0), samples=6)
    finally:
        handle.remove()
    # clean forward, then the 30 copies' E(x) and E(r), then one classifier batch of 30 masked copies
    assert rows == [5, 30, 30, 30]
    loss.backward()
    assert nem.decoder.head.weight.grad.abs().max() > 0


def test_nems_read_a_1d_cnn_and_nemt_trains(task):
    torch.manual_seed(1)
    cnn = CNNClassifier(task.vocab, 3, 12, dim=8, channels=8)
    for cls in (TokenRaNEM, TokenNEMt):
        nem = cls(cnn)
        assert nem.encoder.layers == ["conv1", "conv2"]
        h = nem.fit(task.ids[:32], epochs=1, batch_size=16, progress=False)
        assert np.isfinite(h["epoch_loss"][0])
    with pytest.raises(ValueError, match="cannot include 'delete'"):
        TokenNEMt(cnn, substrates=("delete",))
    with pytest.raises(ValueError, match="substrates must be names among"):
        TokenRaNEM(cnn, substrates=("blur",))
    with pytest.raises(TypeError, match="no nn.TransformerEncoderLayer or nn.Conv1d"):
        TokenRaNEM(torch.nn.Sequential(torch.nn.Embedding(12, 4), torch.nn.Flatten(), torch.nn.Linear(64, 3)),
                   vocab=VOCAB)
    with pytest.raises(ValueError, match="data must hold ids"):
        TokenRaNEM(cnn).fit(task.ids[:16] + 100, epochs=1, progress=False)
    with pytest.raises(ValueError, match="embeddings must be shaped like the token embedding's output"):
        TokenRaNEM(cnn).encoder.logits(task.ids[:2], torch.zeros(2, 12, 5))


# ----------------------------------------------------------------------------- baselines
def test_saliency_is_the_norm_of_the_embedding_gradient(transformer, task):
    ids = task.ids[:4]
    got = token_saliency(transformer, ids)
    emb = transformer.embed(ids).detach().requires_grad_(True)
    hook = transformer.embed.register_forward_hook(lambda m, i, o: emb)
    try:
        with torch.enable_grad():
            logits = transformer(ids)
            logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    finally:
        hook.remove()
    torch.testing.assert_close(got, emb.grad.norm(dim=-1))


def test_integrated_gradients_is_complete(transformer, task):
    ids = task.ids[:4]
    attr = token_integrated_gradients(transformer, ids, steps=64)
    with torch.no_grad():
        logits = transformer(ids)
        c = logits.argmax(1, keepdim=True)
        base = transformer(torch.full_like(ids, task.vocab.mask_id))
    # Completeness: the attributions sum to the logit's change from the baseline sequence.
    torch.testing.assert_close(attr.sum(1), (logits.gather(1, c) - base.gather(1, c))[:, 0], rtol=2e-2, atol=2e-2)


def test_occlusion_equals_a_loop_and_random_is_seeded(transformer, task):
    ids = task.ids[:3]
    got = token_occlusion(transformer, ids, batch_size=5)
    with torch.no_grad():
        p = F.softmax(transformer(ids), 1)
        c = p.argmax(1)
        for b in range(3):
            for i in range(12):
                x = ids[b:b + 1].clone()
                x[0, i] = task.vocab.mask_id
                drop = p[b, c[b]] - F.softmax(transformer(x), 1)[0, c[b]]
                assert got[b, i].item() == pytest.approx(drop.item(), abs=1e-5)
    assert torch.equal(token_random(transformer, ids, seed=3), token_random(transformer, ids, seed=3))
    with pytest.raises(ValueError, match="target must lie in"):
        token_occlusion(transformer, ids, target=7)


def test_the_class_conditioned_decoder_reads_the_explained_class_channel(transformer, task):
    nem = TokenRaNEM(transformer).eval()
    ids = task.ids[:6]
    with torch.no_grad():
        logits, feats = nem.encoder(ids)
        d = nem.decoder
        full = d.head(d.blocks(F.silu(sum(p(f) for p, f in zip(d.project, feats)))))
        a = nem.explain(ids)
    assert full.shape == (6, 3, 12)
    torch.testing.assert_close(a, full[torch.arange(6), logits.argmax(1)])
    single = TokenRaNEM(transformer, condition=False)
    assert single.decoder.head.out_channels == 1 and single.explain(ids).shape == (6, 12)


class SeqFirstClassifier(torch.nn.Module):
    """A user's classifier: torch's defaults (sequence-first layers, nested tensors on), a padding
    mask, and a positional nn.Embedding besides the token one."""

    def __init__(self, batch_first=False):
        super().__init__()
        self.batch_first = batch_first
        self.tok = torch.nn.Embedding(VOCAB.size, 8)
        self.pos = torch.nn.Embedding(16, 8)
        layer = torch.nn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=batch_first)
        self.body = torch.nn.TransformerEncoder(layer, 2)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids):
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        pad = ids == VOCAB.pad_id
        if self.batch_first:
            h = self.body(h, src_key_padding_mask=pad)
        else:
            h = self.body(h.transpose(0, 1), src_key_padding_mask=pad).transpose(0, 1)
        return self.head(h.masked_fill(pad[..., None], 0).sum(1))


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("batch_first", [False, True])
def test_the_encoder_reads_torch_default_transformers_with_padding(batch_first):
    torch.manual_seed(0)
    model = SeqFirstClassifier(batch_first).eval()
    nem = TokenRaNEM(model, vocab=VOCAB)
    assert nem.encoder.embedding_name == "tok" and nem.encoder.layers == ["body.layers.0", "body.layers.1"]
    ids = _ids(3, 10)
    ids[:, 6:] = VOCAB.pad_id  # trailing padding in every row: the fast path packs it away
    ids[0, 8:] = 0
    ids[1, 6:] = 5  # one full row
    logits, feats = nem.encoder(ids)
    assert [f.shape for f in feats] == [(3, 8, 10)] * 2
    torch.testing.assert_close(logits, model(ids))
    # The hidden states are the layers' outputs, batch-first and channels-first.
    with torch.no_grad():
        h = model.tok(ids) + model.pos(torch.arange(10))
        first = model.body.layers[0](h if batch_first else h.transpose(0, 1), src_key_padding_mask=ids == VOCAB.pad_id)
        first = first if batch_first else first.transpose(0, 1)
    real = ids != VOCAB.pad_id
    torch.testing.assert_close(feats[0].transpose(1, 2)[real], first[real], rtol=1e-4, atol=1e-5)
    loss, _ = nem.loss(ids, generator=_gen(0), samples=2)
    loss.backward()
    assert nem.decoder.head.weight.grad.abs().max() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_token_operator_and_curves_on_cuda_match_cpu(transformer, task):
    ids, scores = task.ids[:4], torch.randn(4, 12, generator=_gen(1))
    k = torch.tensor([1, 4, 8, 12])
    for substrate in ("random", "delete"):
        cpu = omega_tokens(ids, scores, k, substrate, task.vocab, generator=_gen(2))
        gpu = omega_tokens(ids.cuda(), scores.cuda(), k.cuda(), substrate, task.vocab, generator=_gen(2))
        assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[2], gpu[2].cpu())
    f_cpu = token_faithfulness(transformer, ids, scores, task.vocab)
    f_gpu = token_faithfulness(transformer.cuda(), ids.cuda(), scores.cuda(), task.vocab)
    transformer.cpu()
    torch.testing.assert_close(f_cpu, f_gpu.cpu(), rtol=1e-4, atol=1e-4)
