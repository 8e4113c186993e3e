"""Upcycling refinements and router initialisation, with values computed by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from megatron_moe.construct.partition.upcycle import (drop_upcycle, scale_swiglu, shared_router_rows,
                                                      upcycle_partition, upcycle_scale)
from megatron_moe.construct.router_init import expert_mean_router, expert_scores, kmeans_router, match


def test_partitions_megatron_and_virtual_groups():
    assert upcycle_partition(8, 4, 2).tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7], [4, 5, 6, 7]]
    assert upcycle_partition(8, 4, 2, virtual_groups=True).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                                         [0, 1, 2, 3], [4, 5, 6, 7]]
    assert upcycle_partition(6, 3, 1, virtual_groups=True).tolist() == [[0, 1, 2, 3, 4, 5]] * 3


def test_scale_and_shared_rows():
    assert upcycle_scale(2, 4.0) == 0.5 and upcycle_scale(8, 1.0) == 8.0
    rows = shared_router_rows(6, 2, 3, torch.Generator().manual_seed(0), 1.0)
    assert torch.equal(rows[0], rows[1]) and torch.equal(rows[4], rows[5]) and not torch.equal(rows[0], rows[2])


def test_swiglu_scaling_is_exact_and_the_cube_root_rule_is_not():
    g = torch.Generator().manual_seed(0)
    w1, w3, w2 = torch.randn(1, 6, 4, generator=g), torch.randn(1, 6, 4, generator=g), torch.randn(1, 4, 6, generator=g)
    x = torch.randn(5, 4, generator=g)

    def ffn(a, b, c):
        return (F.silu(x @ a[0].t()) * (x @ b[0].t())) @ c[0].t()

    a = 0.5
    assert torch.allclose(ffn(*scale_swiglu(w1, w3, w2, a)), a * ffn(w1, w3, w2), atol=1e-6)
    r = a ** (1 / 3)
    assert (ffn(w1 * r, w3 * r, w2 * r) - a * ffn(w1, w3, w2)).abs().max() > 1e-3  # silu is not homogeneous


def test_drop_upcycle_reinitialises_the_same_neurons_in_all_three_matrices():
    g = torch.Generator().manual_seed(1)
    dense = (torch.randn(64, 8, generator=g) + 0.3, torch.randn(64, 8, generator=g) * 2, torch.randn(8, 64, generator=g))
    e1, e3, e2 = (dense[0][:16].repeat(4, 1, 1), dense[1][:16].repeat(4, 1, 1),
                  dense[2][:, :16].repeat(4, 1, 1))
    n1, n3, n2, dropped = drop_upcycle(e1, e3, e2, 0.25, seed=3, dense=dense)
    assert dropped.shape == (4, 4) and len({tuple(r) for r in dropped.tolist()}) > 1  # experts drop different sets
    for e in range(4):
        keep = [f for f in range(16) if f not in dropped[e].tolist()]
        assert torch.equal(n1[e, keep], e1[e, keep]) and torch.equal(n2[e][:, keep], e2[e][:, keep])
        for f in dropped[e].tolist():  # re-drawn in w1/w3 rows and the w2 column together
            assert not torch.equal(n1[e, f], e1[e, f]) and not torch.equal(n3[e, f], e3[e, f])
            assert not torch.equal(n2[e][:, f], e2[e][:, f])
    same = drop_upcycle(e1, e3, e2, 0.0, seed=3, dense=dense)
    assert all(torch.equal(a, b) for a, b in zip(same[:3], (e1, e3, e2), strict=True))
    big = drop_upcycle(dense[0][None].repeat(8, 1, 1), dense[1][None].repeat(8, 1, 1), dense[2][None].repeat(8, 1, 1),
                       1.0, seed=4, dense=dense)
    assert abs(float(big[1].mean()) - float(dense[1].mean())) < 0.1  # drawn with the dense matrix's statistics
    assert abs(float(big[1].std()) / float(dense[1].std()) - 1) < 0.1


def test_expert_mean_router_by_hand():
    w1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 4.0]])
    rows = expert_mean_router(w1, torch.tensor([[0, 1], [2, 3]]))
    s = 1 / math.sqrt(2)
    n = math.hypot(2.0, 2.5)
    assert torch.allclose(rows, torch.tensor([[s, s], [2.0 / n, 2.5 / n]]), atol=1e-6)


def test_kmeans_router_matches_centroids_to_the_experts_they_activate():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.tensor([10.0, 0.0]) + torch.randn(50, 2, generator=g) * 0.1,
                   torch.tensor([0.0, 10.0]) + torch.randn(50, 2, generator=g) * 0.1])
    # expert 0's neurons respond to the second direction, expert 1's to the first
    w1 = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    w3 = w1.clone()
    assign = torch.tensor([[0, 1], [2, 3]])
    rows = kmeans_router(x, w1, w3, assign, seed=0)
    assert torch.allclose(rows, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), atol=2e-2)
    scores = expert_scores(torch.tensor([[10.0, 0.0], [0.0, 10.0]]), w1, w3, assign)
    want = F.silu(torch.tensor(10.0)) * 10  # |silu(w1 c) * (w3 c)| of the matching neurons, 0 for the others
    assert torch.allclose(scores, torch.tensor([[0.0, want], [want, 0.0]], dtype=torch.float64), atol=1e-5)
    assert match(scores).tolist() == [1, 0]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      vocab_size=64, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2) if p.dim() == 2 else p.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("up") / "hf"
    model.save_pretrained(path)
    return path, model


def test_virtual_group_upcycling_with_weight_scaling_starts_equal_to_dense(tiny_hf, tmp_path):
    """The routed MoE (not the all-experts check): top-2 of 8 experts in groups of 2 picks one whole copy."""
    from megatron_moe import load_model
    from megatron_moe.construct.convert import ConvertOptions, convert_dense_to_moe

    path, hf = tiny_hf
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    for scaling, close in ((True, True), (False, False)):
        out = tmp_path / f"vg{scaling}"
        convert_dense_to_moe(path, out, ConvertOptions(num_experts=8, top_k=2, method="upcycle", granularity=2,
                                                       virtual_groups=True, weight_scaling=scaling,
                                                       router="softmax_topk"), progress=False)
        with torch.no_grad():
            delta = (load_model(out)(ids) - hf(ids).logits).abs().max().item()
        assert (delta <= 1e-4) == close, (scaling, delta)  # unscaled, the layer computes s/g = 2 x the FFN
