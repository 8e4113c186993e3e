"""Memory planner against numbers computed by hand from the formulas (module docstring, docs/launch.md)."""
from pathlib import Path

import pytest

from megatron_moe.config import config_from_dict, load_config
from megatron_moe.memory_plan import (GIB, Layout, MemoryPlanError, count_params, layout_from_config, plan_memory,
                                      suggest_layout)

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"

# LLaMA-2-7B pieces, by hand.
EMBED = 32000 * 4096                      # 131_072_000, and the same again for the untied LM head
ATTN = 4 * 4096 * 4096                    # q, k, v, o (no GQA in LLaMA-2-7B): 67_108_864
NORMS = 2 * 4096                          # two RMSNorms per layer
ROUTER_16 = 4096 * 16 + 16 * 16 + 4096 * 16   # mlp gate (Linear(d,E), Linear(E,E)) + noise projection: 131_328
EXPERT_688 = 3 * 4096 * 688               # one expert's w1, w3, w2: 8_454_144
DENSE_16 = 2 * EMBED + 4096 + 32 * (ATTN + NORMS + ROUTER_16)   # 2_414_096_384


def test_param_counts_3p0b_by_hand():
    counts = count_params(load_config(CONFIGS / "llama_moe_3.0b_2of16.yaml"))
    assert DENSE_16 == 2_414_096_384
    assert counts.dense == DENSE_16
    assert counts.routed_experts == 32 * 16 * EXPERT_688 == 4_328_521_728
    assert counts.total == 6_742_618_112
    assert counts.activated == DENSE_16 + 32 * 2 * EXPERT_688 == 2_955_161_600


def test_param_counts_2of8_and_dense_llama2():
    counts = count_params(load_config(CONFIGS / "llama_moe_3.5b_2of8.yaml"))
    router_8 = 4096 * 8 + 8 * 8 + 4096 * 8
    dense = 2 * EMBED + 4096 + 32 * (ATTN + NORMS + router_8)
    assert counts.activated == dense + 32 * 2 * (3 * 4096 * 1376)
    # the dense LLaMA-2-7B is the well-known 6_738_415_616 parameters
    dense_cfg = config_from_dict({"model": {"preset": "llama2-7b"}})
    assert count_params(dense_cfg).total == count_params(dense_cfg).activated == 6_738_415_616


def test_plan_3p0b_on_112_gpus_by_hand():
    """The preset's own layout: tp=1, ep=8, ZeRO-1, micro batch 2, no recompute, bf16, 14 nodes."""
    cfg = load_config(CONFIGS / "llama_moe_3.0b_2of16.yaml")
    plan = plan_memory(cfg, layout_from_config(cfg, 112))
    assert plan.layout == Layout(112, tp=1, ep=8, etp=1, sp=False, sharding="zero1", recompute=False,
                                 micro_batch=2)
    dense, expert = DENSE_16, 32 * (16 // 8) * EXPERT_688          # 541_065_216 expert params per GPU
    assert (plan.local_dense_params, plan.local_expert_params) == (dense, expert)
    assert plan.weights == 2 * (dense + expert)
    assert plan.grads == 4 * (dense + expert) + 4 * 2 ** 25  # + one flat fp32 all-reduce bucket (grads.py)
    assert plan.optimizer == pytest.approx(12 * (dense / 112 + expert / 14))   # dp = 112, edp = 112 / 8
    T = 4096 * 2
    # eager RMSNorm keeps an fp32 copy of its input and the bf16 normalized x: 6*T*D per norm
    attn = 6 * T * 4096 + 2 * T * 4096 + 2 * T * (4096 + 2 * 4096) + 2 * T * 4096 + 4 * T * 32   # T * 65_664
    R = 2 * T  # balanced routing: each rank's experts receive T*K rows, and it sends T*K
    moe = (6 * T * 4096 + 4 * T * 4096 + 16 * T * 16 + 2 * 2 * R * 4096 + 2 * 2 * R * 688
           + 2 * R * 4096)  # norm, router's fp32 input, expert input + output, w1/w3 out, rows sent back
    ends = 6 * T * 4096 + 2 * T * 4096                                     # final norm, head input
    peak = max(10 * T * 32000, 2 * 2 * R * 4096 - 2 * R * 4096)  # logits in bf16 + fp32 + log-softmax
    assert attn + moe == T * 161_536
    assert plan.activations == ends + peak + 32 * (attn + moe) == 45_235_568_640  # 42.13 GiB
    assert plan.a2a_buffers == 2 * 2 * T * 2 * 4096 * 2.0 == 512 * 2 ** 20
    assert plan.overhead == 4 * GIB
    expected_total = (6 * (dense + expert) + 4 * 2 ** 25 + 12 * (dense / 112 + expert / 14) + 45_235_568_640
                      + 512 * 2 ** 20 + 4 * GIB)
    assert plan.total == pytest.approx(expected_total)
    assert 63.5 < plan.total_gib < 64.5 and plan.fits(80)


def test_plan_4of16_tp2_sp_recompute_by_hand():
    cfg = load_config(CONFIGS / "llama_moe_3.5b_4of16.yaml")
    layout = Layout(16, tp=2, ep=4, etp=1, sp=True, sharding="zero1", recompute=True, micro_batch=1)
    plan = plan_memory(cfg, layout)
    dense = 2 * EMBED // 2 + 4096 + 32 * (ATTN // 2 + NORMS + ROUTER_16)
    expert = 32 * (16 // 4) * EXPERT_688
    assert (plan.local_dense_params, plan.local_expert_params) == (dense, expert)
    assert plan.optimizer == pytest.approx(12 * (dense / 8 + expert / 4))   # dp = 16 / 2, edp = 16 / 4
    T, Tr = 4096, 4096 // 2
    attn = 6 * T * 4096 / 2 + 2 * T * 4096 + 2 * T * (3 * 4096) / 2 + 2 * T * 4096 / 2 + 4 * T * 32 / 2
    R = Tr * 4
    moe = (6 * T * 4096 / 2 + 4 * Tr * 4096 + 16 * Tr * 16 + 2 * 2 * R * 4096 + 2 * 2 * R * 688
           + 2 * R * 4096)
    outside = 6 * T * 4096 / 2 + 2 * T * 4096 + max(10 * T * 32000 / 2, 2 * 2 * R * 4096 - 2 * R * 4096)
    kept_inputs = 32 * 2 * T * 4096 / 2
    assert plan.activations == pytest.approx(outside + kept_inputs + attn + moe)
    assert plan.a2a_buffers == 2 * 2 * Tr * 4 * 4096 * 2.0


def test_zero1_matches_megatron_rule_for_dense_model():
    """bf16 + ZeRO-1 costs 6 + 12/dp bytes per parameter (Megatron distributed optimizer)."""
    cfg = config_from_dict({"model": {"preset": "llama2-7b"}, "train": {"global_batch_size": 64}})
    n = 6_738_415_616
    with_zero = plan_memory(cfg, Layout(8, sharding="zero1"))
    without = plan_memory(cfg, Layout(8, sharding="none"))
    bucket = 4 * 2 ** 25  # the flat fp32 gradient all-reduce bucket of training/grads.py
    assert with_zero.weights + with_zero.grads + with_zero.optimizer == pytest.approx(n * (6 + 12 / 8) + bucket)
    assert without.weights + without.grads + without.optimizer == 18 * n + bucket
    assert with_zero.a2a_buffers == 0


def test_recompute_and_fp32_change_the_right_terms():
    cfg = load_config(CONFIGS / "llama_moe_3.5b_2of8.yaml")
    base = plan_memory(cfg, Layout(8, ep=8, sharding="zero1", micro_batch=1))
    rec = plan_memory(cfg, Layout(8, ep=8, sharding="zero1", recompute=True, micro_batch=1))
    assert rec.activations < base.activations / 5
    assert rec.weights == base.weights and rec.optimizer == base.optimizer
    cfg32 = load_config(CONFIGS / "llama_moe_3.5b_2of8.yaml", ["train.precision=fp32"])
    p32 = plan_memory(cfg32, Layout(8, ep=8, sharding="none", micro_batch=1))
    n = p32.local_dense_params + p32.local_expert_params
    assert (p32.weights, p32.grads, p32.optimizer) == (4 * n, 4 * n + 4 * 2 ** 25, 8 * n)


def test_suggestion_fits_when_the_configured_layout_does_not():
    cfg = load_config(CONFIGS / "llama_moe_3.5b_4of16.yaml")
    configured = plan_memory(cfg, layout_from_config(cfg, 8))
    assert not configured.fits(40)
    best = suggest_layout(cfg, 8, 40.0)
    assert best is not None and best.total <= 0.9 * 40 * GIB
    assert best.layout.recompute or best.layout.tp > 1
    assert not best.layout.offload  # offload only when nothing else fits:
    small = suggest_layout(cfg, 8, 8.0)
    assert small.layout.offload and small.layout.sharding in ("zero2", "fsdp") and small.host > 0
    assert suggest_layout(cfg, 8, 4.0) is None  # 4 GiB: nothing fits (the overhead allowance alone)


def test_invalid_layout_is_one_clear_error():
    cfg = load_config(CONFIGS / "llama_moe_3.0b_2of16.yaml")
    with pytest.raises(MemoryPlanError, match="not divisible by ep"):
        plan_memory(cfg, Layout(12, ep=8, micro_batch=2))


DENSE_7B = 6_738_415_616
ROOT_7B = 2 * EMBED + 4096                              # embedding, LM head, final norm: one FSDP unit
LAYER_7B = ATTN + NORMS + 3 * 4096 * 11008              # one decoder layer: the largest other unit


@pytest.mark.parametrize("mode", ["zero2", "fsdp"])
def test_fsdp_modes_by_hand(mode):
    """FSDP2 sharding: fp32 master + Adam (12 bytes) and fp32 grads (4) over dp, plus one unit's unsharded gradient
    (bf16 + its fp32 copy); zero2 keeps every bf16 weight gathered, fsdp the root and two layers."""
    cfg = config_from_dict({"model": {"preset": "llama2-7b"}, "train": {"global_batch_size": 64}})
    n = DENSE_7B
    assert ROOT_7B + 32 * LAYER_7B == n
    plan = plan_memory(cfg, Layout(8, sharding=mode))
    assert plan.optimizer == pytest.approx(12 * n / 8)
    assert ROOT_7B > LAYER_7B  # 262M > 202M: the root is the largest unit
    assert plan.grads == pytest.approx(4 * n / 8 + 6 * ROOT_7B)
    assert plan.weights == (2 * n if mode == "zero2" else 2 * (ROOT_7B + 2 * LAYER_7B))
    off = plan_memory(cfg, Layout(8, sharding=mode, offload=True))
    assert (off.optimizer, off.grads, off.weights) == (0, 6 * ROOT_7B, plan.weights)
    assert off.host == pytest.approx(16 * n / 8) and off.total < plan.total
