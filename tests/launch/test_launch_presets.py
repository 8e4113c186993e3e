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
    assert (tr.precision, tr.zero1, tr.seed, cfg.data.seq_len, tr.global_batch_size) == ("bf16", True, 1227, 4096, 3584)
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
