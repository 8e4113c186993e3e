"""Streamed calibration forward/backward against HF transformers and autograd on the full model."""
import json

import pytest
import torch

from megatron_moe.construct.calibration import (CalibrationError, coactivation_stream, dense_logits,
                                                gradient_importance, load_calibration_tokens)
from megatron_moe.construct.dense import open_dense


def test_streamed_forward_matches_transformers(hf_dense):
    from transformers import LlamaForCausalLM

    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    ref = LlamaForCausalLM.from_pretrained(hf_dense).float().eval()(ids).logits
    ours = dense_logits(open_dense(hf_dense), ids)
    assert (ours - ref).abs().max() <= 1e-4


def test_gradient_importance_matches_autograd(hf_dense):
    from transformers import LlamaForCausalLM

    ids = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(2))
    imp, cluster = gradient_importance(open_dense(hf_dense), ids, num_clusters=2, seed=0, batch_size=3,
                                       progress=False)
    assert imp.shape == (2, 2, 96) and sorted(set(cluster.tolist())) == [0, 1]
    # reference: hooks on HF's down_proj input, loss summed over next-token predictions
    model = LlamaForCausalLM.from_pretrained(hf_dense).float().eval()
    hs = {}
    for i, layer in enumerate(model.model.layers):
        def pre(mod, args, i=i):
            args[0].retain_grad()
            hs[i] = args[0]
        layer.mlp.down_proj.register_forward_pre_hook(pre)
    logits = model(ids).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").backward()
    for i in range(2):
        s = (hs[i] * hs[i].grad).abs()  # [B, S, F]
        for c in range(2):
            rows = cluster == c
            ref = s[rows].sum((0, 1)) / (int(rows.sum()) * 12)
            assert torch.allclose(imp[i, c].float(), ref, rtol=1e-4, atol=1e-7)


def test_coactivation_stream_first_layer(hf_dense):
    from transformers import LlamaForCausalLM

    ids = torch.randint(0, 128, (3, 8), generator=torch.Generator().manual_seed(3))
    model = LlamaForCausalLM.from_pretrained(hf_dense).float().eval()
    h = {}
    model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: h.setdefault("h", a[0].detach()))
    model(ids)
    A = dict(coactivation_stream(open_dense(hf_dense), ids, fn="abs", batch_size=8, progress=False))[1]
    f = h["h"].reshape(-1, 96).abs()
    assert torch.allclose(A, (f.T @ f).clamp(max=1), atol=1e-5)


def test_load_tokens_jsonl_and_errors(calib_jsonl, tmp_path):
    t = load_calibration_tokens([calib_jsonl], num_tokens=64, seq_len=16)
    assert t.shape == (4, 16) and int(t[0, 0]) == 1
    first = json.loads(calib_jsonl.read_text().splitlines()[0])["input_ids"]
    assert t.flatten()[: len(first)].tolist() == first
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration_tokens([tmp_path / "nope.jsonl"], 64, 16)
    with pytest.raises(CalibrationError, match="no calibration data"):
        load_calibration_tokens([], 64, 16)
    txt = tmp_path / "a.txt"
    txt.write_text("hello world")
    with pytest.raises(CalibrationError, match="tokenizer"):
        load_calibration_tokens([txt], 64, 16)
    with pytest.raises(CalibrationError, match="vocabulary"):
        load_calibration_tokens([calib_jsonl], 64, 16, vocab_size=50)
