"""Memory planner with pipeline stages (parallel.pp) against numbers computed by hand from the model's shapes."""
import json
import shlex
from pathlib import Path

import pytest

from _cli import run_cli
from megatron_moe.config import config_from_dict, load_config
from megatron_moe.memory_plan import (GIB, Layout, MemoryPlanError, layout_from_config, plan_memory,
                                      suggest_layout)

ROOT = Path(__file__).resolve().parents[2]
PRESET_70B = "examples/configs/llama2_70b_moe_8e_top2_64gpu.yaml"

# a dense model whose embedding and head are small next to its layers: D=1024, d_ff=4096, 8 layers, 8 heads (no
# GQA), vocabulary 256, 512-token sequences
D, FF, L, H, V, S = 1024, 4096, 8, 8, 256, 512
LAYER = 4 * D * D + 3 * D * FF + 2 * D          # q, k, v, o + w1, w2, w3 + two RMSNorms: 16_779_264
EMBED = V * D                                   # the embedding, and the untied head again


def _dense(**train):
    return config_from_dict({"model": {"hidden_size": D, "intermediate_size": FF, "num_layers": L, "num_heads": H,
                                       "num_kv_heads": H, "vocab_size": V, "max_seq_len": S},
                             "data": {"seq_len": S}, "train": {"global_batch_size": 16, **train}})


def test_weights_per_gpu_halve_with_two_stages():
    cfg = _dense()
    one = plan_memory(cfg, Layout(2, sharding="none"))
    two = plan_memory(cfg, Layout(2, sharding="none", pp=2))
    assert one.local_dense_params == 2 * EMBED + D + L * LAYER
    # stage 0: embedding + 4 layers; stage 1: 4 layers + final norm + head (the same count: the plan is either)
    assert two.local_dense_params == EMBED + 4 * LAYER
    assert two.weights == 2 * (EMBED + 4 * LAYER)
    assert 0.49 < two.weights / one.weights < 0.51
    # dp = world / pp = 1: no gradient all-reduce bucket at pp=2, one at pp=1 (dp=2)
    assert two.grads == 4 * (EMBED + 4 * LAYER) and one.grads == 4 * (2 * EMBED + D + L * LAYER) + 4 * 2 ** 25


def test_uneven_layout_counts_each_stages_layers():
    cfg = _dense()
    plan = plan_memory(cfg, Layout(4, sharding="none", pp=4, pp_layout=(1, 3, 3, 1)))
    heads = [EMBED + LAYER, 3 * LAYER, 3 * LAYER, LAYER + D + EMBED]
    assert len(plan.stage_totals) == 4 and plan.total == max(plan.stage_totals)
    assert plan.local_dense_params == heads[plan.stage]


def test_activations_in_flight_by_hand():
    """1F1B on 4 stages, micro batch 1, 8 micro-batches per step (global 16 / dp 2): stage s keeps 4 - s micro-
    batches of its two layers plus its output (the last: final norm, head input, logits) and torch's receive
    buffers for all 8 micro-batches (forward input + its gradient on s > 0, output gradient on s < 3)."""
    cfg = _dense()
    layout = Layout(8, sharding="none", pp=4)  # dp = 8 / 4 = 2
    a, T = 2, S
    norm = (4 + a) * T * D                                    # eager RMSNorm: fp32 copy of its input + normalized x
    per_layer = (norm + a * T * (D + 3 * D + D) + 4 * T * H  # attention: norm, qkv in, q k v, attention out, lse
                 + norm + a * T * D + 4 * a * T * FF)       # mlp norm, MLP input, w1 out, silu, w3 out, product
    assert per_layer == 29_376_512
    b = a * T * D                                            # one stage-boundary activation: 1 MiB
    logits = norm + a * T * D + (a + 8) * T * V               # final norm, head input, logits, fp32 copy, log-softmax
    expected_act = [4 * (2 * per_layer + b), 3 * (2 * per_layer + b), 2 * (2 * per_layer + b), 2 * per_layer + logits]
    expected_buf = [8 * b, 8 * 3 * b, 8 * 3 * b, 8 * 2 * b]
    from megatron_moe.memory_plan import activation_bytes, micro_batches, pipeline_buffer_bytes
    assert micro_batches(cfg, layout) == 8
    assert [activation_bytes(cfg, layout, s) for s in range(4)] == expected_act
    assert [pipeline_buffer_bytes(cfg, layout, s) for s in range(4)] == expected_buf
    plan = plan_memory(cfg, layout)
    assert plan.stage == 0 and plan.activations == expected_act[0] and plan.pp_buffers == 8 * b
    # recomputation: each in-flight micro-batch keeps the layers' inputs, plus one layer recomputed at a time
    rec = Layout(8, sharding="none", pp=4, recompute=True)
    assert activation_bytes(cfg, rec, 0) == 4 * (2 * b + b) + per_layer


def test_flushes_bound_the_receive_buffers():
    """parallel.pp_flush=4 of the 8 micro-batches: torch's stage keeps 4 receive buffers per kind, not 8; the
    in-flight activations stay those of 1F1B."""
    from megatron_moe.memory_plan import activation_bytes, pipeline_buffer_bytes

    cfg = _dense()
    whole, flushed = Layout(8, sharding="none", pp=4), Layout(8, sharding="none", pp=4, pp_flush=4)
    b = 2 * S * D
    assert [pipeline_buffer_bytes(cfg, flushed, s) for s in range(4)] == [4 * b, 4 * 3 * b, 4 * 3 * b, 4 * 2 * b]
    assert [activation_bytes(cfg, flushed, s) for s in range(4)] == [activation_bytes(cfg, whole, s)
                                                                      for s in range(4)]
    assert "parallel.pp_flush=4" in flushed.overrides() and "pp_flush=4" in flushed.describe()
    with pytest.raises(MemoryPlanError, match="pp_flush=3 must be at least pp=4 and divide the 8 micro-batches"):
        plan_memory(cfg, Layout(8, sharding="none", pp=4, pp_flush=3))


def test_too_few_micro_batches_for_1f1b_is_refused():
    cfg = _dense(global_batch_size=4)  # dp = 2: 2 micro-batches per step, fewer than 4 stages
    with pytest.raises(MemoryPlanError, match="parallel.pp=4 needs at least 4 micro-batches per step"):
        plan_memory(cfg, Layout(8, pp=4))


def test_pp_one_unchanged_and_pp_config_fields_read():
    cfg = _dense(micro_batch_size=1)
    assert layout_from_config(cfg, 2) == Layout(2, sharding="none", micro_batch=1)
    plan = plan_memory(cfg, Layout(2))
    assert plan.pp_buffers == 0 and plan.stage_totals == (plan.total,)
    cfg = load_config(ROOT / PRESET_70B)
    assert layout_from_config(cfg, 64).pp == 4 and layout_from_config(cfg, 64).pp_layout == (20, 19, 20, 21)


def test_70b_on_64_gpus_picks_pipeline_stages():
    """The preset's own layout is what the search suggests: 4 stages, zero1, no weight gathering across nodes
    (fsdp at pp=1 also fits, with less memory, but re-gathers 69B parameters over 8 nodes every micro-batch)."""
    cfg = load_config(ROOT / PRESET_70B)
    best = suggest_layout(cfg, 64, 80.0)
    assert best is not None and best.layout.pp == 4 and best.layout.sharding == "zero1"
    assert best.layout == layout_from_config(cfg, 64)
    assert best.total <= 0.9 * 80 * GIB
    even = plan_memory(cfg, Layout(64, ep=8, sharding="zero1", recompute=True, micro_batch=2, pp=4))
    assert best.total < even.total  # the balanced split lowers the largest stage
    fsdp = plan_memory(cfg, Layout(64, ep=8, sharding="fsdp", recompute=True, micro_batch=2))
    assert fsdp.fits(72) and fsdp.total < best.total


def test_plan_cli_shows_pp_and_its_overrides_round_trip():
    def cli(*args):
        return run_cli("tools/plan_memory.py", *args, timeout=300)

    proc = cli("--config", PRESET_70B, "--gpus", "64", "--gpu-mem", "80")
    assert proc.returncode == 0, proc.stderr
    assert "pp=4 pp_layout=20,19,20,21 dp=16 edp=2" in proc.stdout
    assert "pipeline: pp=4, layers per stage [20, 19, 20, 21], 32 micro-batches per step" in proc.stdout
    assert "pp_buffers" in proc.stdout and "-> fits in 80 GiB" in proc.stdout
    # the same model on 64 GPUs from a pp=1 layout that does not fit: the suggestion's overrides select it
    proc = cli("--config", PRESET_70B, "--gpus", "64", "--gpu-mem", "80", "parallel.pp=1", "parallel.pp_layout=null",
               "train.global_batch_size=1024")
    assert proc.returncode == 1 and "pp=1 dp=64" in proc.stdout
    line = next(row for row in proc.stdout.splitlines() if row.startswith("overrides: "))
    overrides = shlex.split(line[len("overrides: "):])
    assert "parallel.pp=4" in overrides and "parallel.pp_layout=[20,19,20,21]" in overrides
    cfg = load_config(ROOT / PRESET_70B, ["parallel.pp=1", "parallel.pp_layout=null", *overrides])
    assert plan_memory(cfg, layout_from_config(cfg, 64)).fits(72)
    data = json.loads(cli("--config", PRESET_70B, "--gpus", "64", "--json").stdout)
    assert data["configured"]["layout"]["pp"] == 4 and len(data["configured"]["stage_totals"]) == 4
    assert "pipeline stages pp" in run_cli("-m", "megatron_moe.cli", "plan", "--help", timeout=60).stdout
