"""The torch twins against an independent naive per-token loop (float64 ground truth), plus API checks."""
import pytest
import torch

import moe_kernels
from moe_kernels import reference as ref
from moe_kernels._align import align_pairs
from kernel_cases import CASES, CASE_IDS, assert_close, grads_of, make_logits, make_mlp_inputs, naive_gating, \
    naive_moe_mlp


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_twin_gating_matches_naive(c):
    logits, bias = make_logits(c)
    logits64 = logits.double()
    w, idx, cnt, psum = ref.topk_gating(logits, c.K, c.score, bias, c.scale, return_probs_sum=True)
    nw, nidx, ncnt, npsum = naive_gating(logits64, c.K, c.score, bias, c.scale)
    assert idx.dtype == torch.int64 and w.dtype == torch.float32 and cnt.dtype == torch.int64
    assert nw.dtype == npsum.dtype == torch.float64  # the ground truth really is float64
    assert torch.equal(idx, nidx), f"indices differ:\n{idx}\n{nidx}"
    assert torch.equal(cnt, ncnt)
    assert int(cnt.sum()) == c.T * c.K
    assert_close(w, nw, 1e-5, 1e-6, "weights")
    assert_close(psum, npsum, 1e-5, 1e-6, "probs_sum")
    # gradients through weights and probs_sum together
    g = torch.Generator().manual_seed(7)
    pw, pp = torch.randn(c.T, c.K, generator=g), torch.randn(c.E, generator=g)
    l1 = logits.clone().requires_grad_()
    w1_, _, _, ps1 = ref.topk_gating(l1, c.K, c.score, bias, c.scale, return_probs_sum=True)
    ((w1_ * pw).sum() + (ps1 * pp).sum()).backward()
    l2 = logits64.clone().requires_grad_()
    w2_, _, _, ps2 = naive_gating(l2, c.K, c.score, bias, c.scale)
    ((w2_ * pw.double()).sum() + (ps2 * pp.double()).sum()).backward()
    assert_close(l1.grad, l2.grad, 1e-5, 1e-6, "d logits")


def test_ties_go_to_lower_index():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    _, idx, cnt = ref.topk_gating(logits, 2)
    assert idx.tolist() == [[1, 2], [0, 1]]
    assert cnt.tolist() == [1, 2, 1, 0, 0]
    w, idx, _ = moe_kernels.topk_gating(logits, 3, "sigmoid")
    assert idx.tolist() == [[1, 2, 3], [0, 1, 2]]
    assert torch.allclose(w[1], torch.full((3,), 1 / 3))


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_twin_moe_mlp_matches_naive(c):
    inputs = make_mlp_inputs(c)
    y, grads = grads_of(ref.moe_mlp, inputs)
    inputs64 = [t.double() if t.is_floating_point() else t for t in inputs]
    ny, ngrads = grads_of(naive_moe_mlp, inputs64)
    assert_close(y, ny, 1e-5, 1e-5, "y")
    for name, g, ng in zip(["dx", "dweights", "dw1", "dw3", "dw2"], grads, ngrads, strict=True):
        assert_close(g, ng, 1e-5, 1e-5, name)
    if c.empty_expert:
        assert grads[2][1].abs().max() == 0 and grads[4][1].abs().max() == 0


def test_moe_mlp_other_rank_only_gives_zero():
    c = CASES[2]
    x, w, idx, w1, w3, w2 = make_mlp_inputs(c)
    idx = torch.full_like(idx, c.E)  # every expert lives elsewhere
    y, grads = grads_of(ref.moe_mlp, [x, w, idx, w1, w3, w2])
    assert y.abs().max() == 0
    assert all(g.abs().max() == 0 for g in grads)


def test_align_pairs_bounds():
    """Explicit bounds checks on the block-aligned layout the kernels index with."""
    g = torch.Generator().manual_seed(3)
    for T, K, E, bm in [(1, 1, 1, 16), (13, 4, 8, 16), (40, 2, 3, 4), (9, 2, 5, 64)]:
        idx = torch.randint(-1, E + 1, (T, K), generator=g)  # includes other-rank ids
        al = align_pairs(idx, E, bm)
        P, R = T * K, al.num_rows
        ids = al.sorted_ids_R
        assert R % bm == 0 and R >= P + 0 and al.block_expert_B.numel() == R // bm
        assert ids.min() >= 0 and ids.max() <= P
        valid = ((idx >= 0) & (idx < E)).reshape(-1)
        real = ids[ids < P]
        assert sorted(real.tolist()) == torch.nonzero(valid).flatten().tolist()  # each valid pair once
        flat = idx.reshape(-1)
        for b, e in enumerate(al.block_expert_B.tolist()):
            tile = ids[b * bm:(b + 1) * bm]
            if e < 0:
                assert (tile == P).all()
                continue
            assert 0 <= e < E
            assert (flat[tile[tile < P]] == e).all()
            assert al.pad_off_E[e] <= b * bm < al.pad_off_E[e] + al.pad_cnt_E[e]
        assert int((al.pad_off_E + al.pad_cnt_E).max()) <= R
        assert torch.equal(al.counts_E, torch.bincount(flat[valid], minlength=E))
        assert ((real // K) < T).all()


def test_bad_arguments_raise():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match="k must be"):
        moe_kernels.topk_gating(logits, 4)
    with pytest.raises(ValueError, match="score_function"):
        moe_kernels.topk_gating(logits, 1, "relu")
    with pytest.raises(ValueError, match="bias"):
        moe_kernels.topk_gating(logits, 1, bias=torch.zeros(2))
    x = torch.randn(4, 8)
    w1 = torch.randn(3, 5, 8)
    with pytest.raises(ValueError, match="w2"):
        moe_kernels.moe_mlp(x, torch.ones(4, 1), torch.zeros(4, 1, dtype=torch.long), w1, w1, w1)


def test_dispatch_without_interpreter_uses_twin():
    if moe_kernels.INTERPRET:
        pytest.skip("this process runs the interpreter")
    assert moe_kernels.backend_for(torch.zeros(1)) == "reference"
