"""The paper's three presets load, validate at their intended world sizes and carry the paper's numbers."""
from pathlib import Path

import pytest

from megatron_moe.config import load_config
from megatron_moe.memory_plan import count_params

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"
# name: (experts, top_k, expert FFN width, score scale, activated params in the paper's name, billions)
PRESETS = {
    "llama_moe_3.0b_2of16.yaml": (16, 2, 688, 8.0, 3.0),
    "llama_moe_3.5b_4of16.yaml": (16, 4, 688, 4.0, 3.5),
    "llama_moe_3.5b_2of8.yaml": (8, 2, 1376, 4.0, 3.5),
}
DOMAINS = ["cc", "c4", "github", "wikipedia", "book", "arxiv", "stackexchange"]


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("world_size", [8, 16, 112])  # one node, two nodes, the paper's 14 nodes
def test_preset_validates(name, world_size):
    cfg = load_config(CONFIGS / name)
    cfg.validate(world_size)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_matches_paper(name):
    experts, top_k, ffn, scale, activated_b = PRESETS[name]
    cfg = load_config(CONFIGS / name)
    m, moe, tr = cfg.model, cfg.moe, cfg.train
    assert (m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.vocab_size) == (4096, 11008, 32, 32, 32000)
    assert (moe.num_experts, moe.top_k, moe.ffn_size(m), moe.scale) == (experts, top_k, ffn, scale)
    assert experts * ffn == 11008  # Independent-Random split covers every neuron once
    assert moe.router == "noisy_topk" and moe.capacity_factor is None and moe.aux_loss_coeff == 0.01
    assert (tr.lr, tr.warmup_steps, tr.lr_schedule, tr.min_lr_ratio) == (2e-4, 100, "cosine", 0.1)
    assert (tr.adam_beta1, tr.adam_beta2, tr.weight_decay, tr.clip_grad) == (0.9, 0.95, 0.1, 1.0)
    assert (tr.precision, tr.sharding, tr.seed, cfg.data.seq_len, tr.global_batch_size) == ("bf16", "zero1", 1227, 4096, 3584)
    assert [d.name for d in cfg.data.domains] == DOMAINS
    assert cfg.data.weights_preset == "sheared_llama" and cfg.data.sampling == "static"
    assert all(len(d.prefixes) == 1 and d.prefixes[0].startswith(f"data/slimpajama/{d.name}/") for d in cfg.data.domains)
    assert cfg.checkpoint.load == f"checkpoints/{name[:-5]}"
    counts = count_params(cfg)
    assert round(counts.activated / 1e9, 1) == activated_b
    assert round(counts.total / 1e9, 1) == 6.7


def test_presets_differ_only_where_the_paper_does():
    texts = {name: (CONFIGS / name).read_text() for name in PRESETS}
    lines = {name: set(t.splitlines()) for name, t in texts.items()}
    common = set.intersection(*lines.values())
    for name, own in lines.items():
        assert len(own - common) <= 20, f"{name} drifted from the other presets"


def test_llama3_recipe_fits_and_has_the_v2_shape():
    """LLaMA-MoE v2's shape on LLaMA-3-8B: 8 experts x 1792, top-2, every neuron once; fits 8 x 80 GB."""
    from megatron_moe.memory_plan import layout_from_config, plan_memory

    cfg = load_config(CONFIGS / "llama3_8b_moe_8e_top2.yaml")
    m, moe = cfg.model, cfg.moe
    assert (m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.kv_heads, m.vocab_size) == \
        (4096, 14336, 32, 32, 8, 128256)
    assert (moe.num_experts, moe.top_k, moe.ffn_size(m), moe.scale) == (8, 2, 1792, 4.0)
    assert moe.num_experts * moe.ffn_size(m) == m.intermediate_size
    for world in (8, 16, 112):
        cfg.validate(world)
        assert plan_memory(cfg, layout_from_config(cfg, world)).fits(80), world
    counts = count_params(cfg)
    assert round(counts.total / 1e9, 2) == 8.03 and round(counts.activated / 1e9, 2) == 3.80


@pytest.mark.parametrize("preset,total_b", [("llama3-8b", 8.03), ("llama3.1-8b", 8.03), ("llama3.2-1b", 1.24),
                                            ("llama3.2-3b", 3.21), ("mistral-7b", 7.25), ("qwen2.5-0.5b", 0.49),
                                            ("qwen2.5-1.5b", 1.54), ("qwen2.5-7b", 7.62)])
def test_family_presets_have_the_published_sizes(preset, total_b):
    """The public parameter counts (model cards: 8.03B, 1.24B, 3.21B, 7.25B, 0.49B, 1.54B, 7.62B)."""
    from megatron_moe.config import Config, ModelConfig, MODEL_PRESETS

    cfg = Config(model=ModelConfig(**MODEL_PRESETS[preset]))
    cfg.model.validate()
    assert round(count_params(cfg).total / 1e9, 2) == total_b


def test_llama2_70b_pipeline_recipe_validates_at_64_and_fits():
    """LLaMA-2-70B's shape (8192 wide, FFN 28672 = 8 x 3584, 80 layers, GQA 64/8, vocabulary 32000), 8 experts
    top-2, 4 pipeline stages: validates on 8 nodes x 8 GPUs and the planner puts it within 80 GB (with its 10%
    margin); other world sizes that do not divide the batch are refused."""
    from megatron_moe.config import ConfigError
    from megatron_moe.memory_plan import GIB, layout_from_config, plan_memory

    cfg = load_config(CONFIGS / "llama2_70b_moe_8e_top2_64gpu.yaml")
    m, moe, p = cfg.model, cfg.moe, cfg.parallel
    assert (m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.kv_heads, m.vocab_size) == \
        (8192, 28672, 80, 64, 8, 32000)
    assert (moe.num_experts, moe.top_k, moe.ffn_size(m), moe.scale) == (8, 2, 3584, 4.0)
    assert moe.num_experts * moe.ffn_size(m) == m.intermediate_size
    assert p.pp == 4 and sum(p.stage_layers(80)) == 80
    cfg.validate(64)
    plan = plan_memory(cfg, layout_from_config(cfg, 64))
    assert plan.total <= 0.9 * 80 * GIB and len(plan.stage_totals) == 4
    with pytest.raises(ConfigError):
        cfg.validate(48)  # not divisible by ep*etp*pp = 32
    counts = count_params(cfg)
    routers = 80 * (8192 * 8 + 8 * 8 + 8192 * 8)   # mlp gate network + noise projection per layer
    assert counts.total == 68_976_648_192 + routers  # LLaMA-2-70B's published 68,976,648,192 + the routers
    assert counts.activated == counts.total - 80 * 6 * 3 * 8192 * 3584  # 6 of 8 experts idle per token
