"""Accelerator checks (`gpu` marker; skipped without CUDA): the dense model in bf16 matches transformers to bf16
tolerance, the MoE layer's kernel path matches its torch path, and the trainer runs bf16 steps.

bf16 tolerance, defined against the fp32 result of transformers (the truth): our bf16 logits may deviate from it
by at most 2x what transformers' own bf16 run deviates, plus 0.02. A pure bf16-rounding difference stays
well inside; a real bug (wrong rotary, wrong norm) is orders of magnitude larger.

`MOE_TEST_DEVICE=cpu pytest -m gpu tests/foundation/test_accelerator_bf16.py` runs the same checks on CPU (bf16
matmuls, torch twins instead of Triton) to test the tests themselves.
"""
import math
import os

import pytest
import torch

from _train_helpers import prepared, tiny_config, write_corpus
from megatron_moe.config import Config, ModelConfig, MoEConfig
from megatron_moe.construct.dense import load_dense_into_model, open_dense
from megatron_moe.model import build_model
from megatron_moe.model.moe.layer import MoELayer
from megatron_moe.parallel import ParallelState
from megatron_moe.training import build_trainer
from test_import_parity import tiny_hf

pytestmark = pytest.mark.gpu
DEVICE = torch.device(os.environ.get("MOE_TEST_DEVICE", "cuda"))


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_dense_bf16_logits_match_transformers(tmp_path, kv_heads):
    hf = tiny_hf(kv_heads)
    hf.save_pretrained(tmp_path)
    ids = torch.randint(0, 320, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        truth = hf(ids).logits.float()
        hf_bf16 = hf.to(DEVICE, torch.bfloat16)(ids.to(DEVICE)).logits.float().cpu()
        reader = open_dense(tmp_path)
        ours = build_model(Config(model=reader.config)).eval()
        load_dense_into_model(ours, reader)
        got = ours.to(DEVICE, torch.bfloat16)(ids.to(DEVICE)).float().cpu()
    hf_err = (hf_bf16 - truth).abs().max().item()
    our_err = (got - truth).abs().max().item()
    assert our_err <= 2 * hf_err + 0.02, (our_err, hf_err)


@pytest.mark.parametrize("router", ["softmax_topk", "noisy_topk", "sigmoid"])
def test_moe_layer_kernel_path_matches_torch_path(router):
    model = ModelConfig(hidden_size=256, intermediate_size=8 * 176, num_layers=1, num_heads=4)
    outs = {}
    for mode in ("off", "on"):
        moe = MoEConfig(num_experts=8, top_k=2, expert_ffn_size=176, router=router, noisy_gate=False,
                        use_kernels=mode)
        torch.manual_seed(0)
        layer = MoELayer(model, moe, ParallelState(), 0)
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_(0.0, 0.05)
        layer = layer.to(DEVICE).train()
        x = torch.randn(2, 301, 256, generator=torch.Generator().manual_seed(1)).to(DEVICE).requires_grad_()
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            y = layer(x)
        y.float().square().mean().backward()
        grads = [p.grad for _, p in sorted(layer.named_parameters())]  # None: unused (noise off)
        outs[mode] = [y.detach().float().cpu(), x.grad.float().cpu()] + [
            g.float().cpu() if g is not None else torch.zeros(0) for g in grads]
    for a, b in zip(outs["on"], outs["off"], strict=True):
        assert a.shape == b.shape
        if b.numel() == 0:
            continue
        scale = b.abs().max().item() + 1e-6
        assert (a - b).abs().max().item() <= 3e-2 * scale, ((a - b).abs().max().item(), scale)


def test_training_steps_in_bf16(tmp_path):
    prefixes = write_corpus(tmp_path / "data")
    cfg = tiny_config(prefixes, tmp_path / "run", moe=True, train_steps=20, lr=1e-2, global_batch_size=16,
                      micro_batch_size=8, eval_interval=20)
    cfg.train.precision = "bf16"
    cfg = prepared(cfg, 1)
    trainer = build_trainer(cfg, ParallelState(device=DEVICE))
    assert next(trainer.model.parameters()).device.type == DEVICE.type
    losses = [r["loss"] for r in trainer.train()]
    trainer.close()
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
