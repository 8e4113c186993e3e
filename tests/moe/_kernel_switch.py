"""One training step of an MoE layer per router, with use_kernels "on" (Triton; in the CPU interpreter when
TRITON_INTERPRET=1 was set before import) or "off" (the torch path); test_moe_units.py compares the two.

Training mode: balance loss and z-loss on (their gradients enter through the layer), the noisy gate on for
noisy_topk, a non-zero expert bias for sigmoid. The router noise is keyed by (seed, step, global sample)
through the trainer's own hook (training/moe_hooks.set_noise_context), so both processes draw the same noise.

    python tests/moe/_kernel_switch.py OUT.pt on|off
"""
from __future__ import annotations

import sys

import torch

ROUTERS = {  # MoEConfig overrides per case
    "noisy_topk": dict(router="noisy_topk", noisy_gate=True, aux_loss_coeff=0.3, z_loss_coeff=0.05),
    "softmax_topk": dict(router="softmax_topk", aux_loss_coeff=0.3, z_loss_coeff=0.05),
    "sigmoid": dict(router="sigmoid", aux_loss_coeff=0.3, z_loss_coeff=0.05),
}


def step(router: str, mode: str) -> dict:
    """Output, d(input) and every parameter's gradient of one training step, plus the logged aux loss."""
    from megatron_moe.config import ModelConfig, MoEConfig
    from megatron_moe.model.moe import MoELayer
    from megatron_moe.parallel import ParallelState
    from megatron_moe.training.moe_hooks import set_noise_context

    model = ModelConfig(hidden_size=8, intermediate_size=16, num_layers=1, num_heads=1, vocab_size=8)
    layer = MoELayer(model, MoEConfig(num_experts=4, top_k=2, use_kernels=mode, **ROUTERS[router]), ParallelState(),
                     layer_idx=1)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for _, p in sorted(layer.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if router == "sigmoid":
            layer.router.expert_bias.copy_(torch.tensor([0.2, -0.1, 0.0, 0.05]))
    layer.train()
    set_noise_context([layer], seed=11, step=3, first_sample=2)
    x = torch.randn(2, 5, 8, generator=g).requires_grad_()
    y = layer(x)
    (y * torch.randn(y.shape, generator=g)).sum().backward()
    grads = {name: p.grad for name, p in layer.named_parameters()}
    return {"y": y.detach(), "dx": x.grad, "grads": grads, "aux_loss": layer.last_stats["aux_loss"],
            "z_loss": layer.last_stats["z_loss"], "tokens": layer.last_stats["tokens_per_expert"]}


def main(out: str, mode: str) -> None:
    import moe_kernels

    calls = []
    for name in ("moe_mlp", "topk_gating"):  # count calls into the kernel API
        fn = getattr(moe_kernels, name)
        setattr(moe_kernels, name, lambda *a, _f=fn, _n=name, **k: calls.append(_n) or _f(*a, **k))
    res = {r: step(r, mode) for r in ROUTERS}
    torch.save({"res": res, "calls": calls, "backend": moe_kernels.backend_for(torch.zeros(1))}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
