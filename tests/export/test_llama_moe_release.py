"""LLaMA-MoE v1 checkpoints in their released layout import and compute what the LLaMA-MoE code computes.

The fixtures (tests/fixtures/llama_moe_v1/, made by make_fixture.py there; provenance.json says how) were written
by the LLaMA-MoE modeling code's own save_pretrained, as the released models were: bf16 tensors, bf16
rotary_emb.inv_freq buffers, sharded pytorch_model-0000i-of-00003.bin + pytorch_model.bin.index.json. The reference
logits and expert choices were computed by their code from those files (fp32 and bf16), not by ours.
"""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _cli import run_cli
from megatron_moe import load_model
from megatron_moe.checkpoint import read_config, read_index, read_tensors
from megatron_moe.errors import CheckpointError
from megatron_moe.export import import_llama_moe

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "llama_moe_v1"
VARIANTS = {"linear": ("linear", 2.0), "mlp": ("mlp", 4.0)}
INV_FREQ = "model.layers.{i}.self_attn.rotary_emb.inv_freq"


def _their_tensors(d: Path) -> dict:
    """Every tensor of a fixture, read independently of our reader (torch.load, weights_only)."""
    sd = {}
    for f in sorted(d.glob("pytorch_model-*.bin")):
        sd.update(torch.load(f, map_location="cpu", weights_only=True))
    return sd


def _cli(*args):
    return run_cli("tools/import_llama_moe.py", *args, timeout=180)


def _run_routed(model, ids, margins=None):
    """Our logits and each layer's chosen experts [L, T, k] (ascending), as the fixture records theirs; with
    `margins` (a list), also each layer's router-logit gap between the k-th and the (k+1)-th expert [T], and
    the layer's largest |router logit|."""
    chosen = []

    def hook(router, inputs, out):
        chosen.append(out.indices_TK.sort(dim=-1).values)
        if margins is not None:
            x_TD = inputs[0].float().reshape(-1, inputs[0].shape[-1])
            logits_TE = router.logits(x_TD)
            k = out.indices_TK.shape[-1]
            top = logits_TE.topk(k + 1, dim=-1).values
            margins.append((top[:, k - 1] - top[:, k], logits_TE.abs().max().item()))

    hooks = [layer.mlp.router.register_forward_hook(hook) for layer in model.layers]
    with torch.no_grad():
        logits = model(ids)
    for h in hooks:
        h.remove()
    return logits, torch.stack(chosen)


def test_fixture_is_the_released_layout():
    """Guards the premise of the tests below: what their save path wrote is bf16, sharded .bin, bf16 buffers."""
    for v in VARIANTS:
        d = FIXTURES / v
        index = json.loads((d / "pytorch_model.bin.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) >= 2 and not list(d.glob("*.safetensors")) and not (d / "pytorch_model.bin").exists()
        assert json.loads((d / "config.json").read_text())["torch_dtype"] == "bfloat16"
        sd = _their_tensors(d)
        assert {t.dtype for t in sd.values()} == {torch.bfloat16}
        assert all(INV_FREQ.format(i=i) in sd for i in range(2))
        # layers span shards, so the import must follow the index across files
        assert len({index["weight_map"][n] for n in index["weight_map"] if n.startswith("model.layers.0.")}) >= 2


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_release_layout_imports_and_matches_their_fp32_logits(tmp_path, variant):
    gate_network, scale = VARIANTS[variant]
    out = import_llama_moe(FIXTURES / variant, tmp_path / "ck", progress=False)
    model_cfg, moe, _ = read_config(out)
    assert (moe.num_experts, moe.top_k, moe.expert_ffn_size, moe.gate_network, moe.scale) == (4, 2, 16,
                                                                                                gate_network, scale)
    assert (model_cfg.hidden_size, model_cfg.num_layers, model_cfg.num_heads, model_cfg.rope_theta) == (32, 2, 2, 1e4)
    assert read_index(out)["dtype"] == "float32"  # --dtype default: fp32, as `import`
    ours, theirs = read_tensors(out), _their_tensors(FIXTURES / variant)
    p = "model.layers.1.mlp.calculator.experts."
    assert torch.equal(ours["layers.1.mlp.experts.w2"][3], theirs[f"{p}weight_down.3"].float())
    assert torch.equal(ours["layers.1.mlp.experts.w1"][0], theirs[f"{p}weight_gate.0"].float())

    ref = load_file(str(FIXTURES / f"reference_{variant}.safetensors"))
    logits, experts = _run_routed(load_model(out), ref["input_ids"])
    # Same experts for every token and layer, and the same logits: both sides hold the same bf16 weights exactly
    # in fp32 and compute in fp32, so they differ only by summation order (measured ~1e-6 on logits of size ~3);
    # 1e-4 is far below what any modelling difference gives (score scale, a rotary or routing change: > 1e-2).
    assert torch.equal(experts, ref["experts_fp32"])
    err = (logits - ref["logits_fp32"]).abs().max().item()
    assert err <= 1e-4, err


@pytest.mark.parametrize("variant,via", [("linear", "cli"), ("mlp", "api")])
def test_release_layout_bf16_import_keeps_bits_and_matches_their_bf16_logits(tmp_path, variant, via):
    if via == "cli":
        r = _cli("--load", FIXTURES / variant, "--save", tmp_path / "ck", "--dtype", "bf16")
        assert r.returncode == 0, r.stderr[-2000:]
    else:
        import_llama_moe(FIXTURES / variant, tmp_path / "ck", dtype=torch.bfloat16, progress=False)
    assert read_index(tmp_path / "ck")["dtype"] == "bfloat16"
    ours, theirs = read_tensors(tmp_path / "ck"), _their_tensors(FIXTURES / variant)
    for j in range(4):  # stored bits unchanged
        assert torch.equal(ours["layers.0.mlp.experts.w3"][j], theirs[f"model.layers.0.mlp.calculator.experts.weight_up.{j}"])
    assert torch.equal(ours["embed.weight"], theirs["model.embed_tokens.weight"])

    ref = load_file(str(FIXTURES / f"reference_{variant}.safetensors"))
    margins = []
    logits, experts = _run_routed(load_model(tmp_path / "ck", dtype=torch.bfloat16), ref["input_ids"], margins)
    # Two bf16 computations of one function differ by rounding, not by a fixed amount: every op rounds to an 8-bit
    # mantissa (unit roundoff u = 2^-8), and two layers of ~10 such ops put either side a few u (relative to the
    # logits' size) from the exact logits; measured: ours 2.3u-6.8u, theirs 2.5u-4.3u from their fp32 logits, 5u-6.3u
    # apart. So an expert choice may differ only where the router's k-th and (k+1)-th logits are within a few u of
    # each other (a near-tie: measured once, 0.75u, layer 1, after the experts' weighting moved before the down
    # projection), and only rarely; a modelling difference (score scale, rotary, routing) moves many choices.
    B, S = ref["input_ids"].shape
    flipped_LT = (experts != ref["experts_bf16"]).any(-1)
    for layer, (margin_T, scale) in enumerate(margins):
        not_tie = flipped_LT[layer] & (margin_T > 4 * 2.0 ** -8 * scale)
        assert not not_tie.any(), (layer, not_tie.nonzero().flatten().tolist())
    assert int(flipped_LT.sum()) <= 2, flipped_LT.nonzero().tolist()
    # Logits, on every token that no differing choice can reach (a choice at position s changes positions >= s of
    # its sequence through attention); 16u (0.2 here) catches what the fp32 test catches by orders of magnitude more
    # (a wrong score scale moves logits by ~1).
    reach_BS = flipped_LT.any(0).view(B, S).int().cummax(dim=1).values.bool()
    assert (~reach_BS).sum() >= B * S // 2
    tol = 16 * 2.0 ** -8 * ref["logits_fp32"].abs().max().item()
    err = (logits.float() - ref["logits_bf16"].float()).abs()[~reach_BS].max().item()
    assert err <= tol, (err, tol)


def _rewrite_shards(d: Path, change) -> None:
    """Apply change(name, tensor) -> tensor to every tensor of a copied fixture, rewriting its shards."""
    for f in sorted(d.glob("pytorch_model-*.bin")):
        sd = torch.load(f, map_location="cpu", weights_only=True)
        torch.save({n: change(n, t) for n, t in sd.items()}, f)


def _inv_freq(theta, h=16, dtype=torch.bfloat16):
    return (1.0 / theta ** (torch.arange(0, h, 2, dtype=torch.float32) / h)).to(dtype)


def _nudge(t, k, at=5):
    """t with element `at` moved k units in the last place of its dtype (NaN for k=None)."""
    t = t.clone()
    t[at] = float("nan") if k is None else t[at] + k * torch.finfo(t.dtype).eps * 2.0 ** math.floor(math.log2(t[at].item()))
    return t


CORRUPT = {  # what is wrong -> (rewrite of an inv_freq buffer, config.json change)
    "theta 5e5 in the buffers": (lambda i, t: _inv_freq(5e5), {}),
    "config says rope_theta 1e6": (lambda i, t: t, {"rope_theta": 1e6}),
    "layer 1 two bf16 ulps off": (lambda i, t: _nudge(t, 2) if i == 1 else t, {}),
    "layer 1 NaN": (lambda i, t: _nudge(t, None) if i == 1 else t, {}),
    "theta 5e5 stored in fp32": (lambda i, t: _inv_freq(5e5, dtype=torch.float32), {}),
}


def _corrupted(tmp_path, case) -> Path:
    rewrite, cfg_change = CORRUPT[case]
    d = tmp_path / "hf"
    shutil.copytree(FIXTURES / "linear", d)
    _rewrite_shards(d, lambda n, t: rewrite(int(n.split(".")[2]), t) if n.endswith("rotary_emb.inv_freq") else t)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **cfg_change}))
    return d


@pytest.mark.parametrize("case", list(CORRUPT))
def test_release_layout_other_rotary_frequencies_refused(tmp_path, case):
    d = _corrupted(tmp_path, case)
    with pytest.raises(CheckpointError, match=r"rotary_emb\.inv_freq.*not the default rotary frequencies") as e:
        import_llama_moe(d, tmp_path / "ck", progress=False)
    assert "\n" not in str(e.value) and ("layers.1." in str(e.value)) == ("layer 1" in case)
    assert not (tmp_path / "ck").exists()


def test_release_layout_refusal_is_one_line_exit_2(tmp_path):
    r = _cli("--load", _corrupted(tmp_path, "theta 5e5 in the buffers"), "--save", tmp_path / "ck")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "rope_theta=10000.0" in lines[0], r.stderr
    assert not (tmp_path / "ck").exists() and not list(tmp_path.glob("ck*"))


@pytest.mark.parametrize("which", ["nearest", "other neighbour"])
def test_buffer_within_its_dtype_rounding_imports(tmp_path, which):
    """The edge of the check: either bf16 value next to the exact default frequency is accepted (a faithful
    rounding of it), two units in the last place off is refused (CORRUPT above)."""
    d = tmp_path / "hf"
    shutil.copytree(FIXTURES / "linear", d)
    exact = 1.0 / 1e4 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    nearest = exact.to(torch.bfloat16)
    stored = nearest if which == "nearest" else _nudge(nearest, 1 if nearest[5].double() < exact[5] else -1)
    half_ulp = torch.finfo(torch.bfloat16).eps / 2 * 2.0 ** math.floor(math.log2(exact[5].item()))
    assert which == "nearest" or (stored[5].double() - exact[5]).abs() > half_ulp  # not round-to-nearest
    _rewrite_shards(d, lambda n, t: stored if n.endswith("inv_freq") else t)
    import_llama_moe(d, tmp_path / "ck", progress=False)
