"""The no-download demo corpus (stdlib sources as "code", pydoc topics / docstrings as "prose"), end to end."""
import ast
import json

import torch

from megatron_moe.config import DataConfig
from megatron_moe.data.local_corpus import build_demo_corpus, prepare_demo_data
from megatron_moe.data.multidomain import MultiDomainData
from megatron_moe.data.tokenizer import load_tokenizer


def test_demo_corpus_has_two_real_domains(tmp_path):
    paths = build_demo_corpus(tmp_path, max_docs_per_domain=12)
    code = [json.loads(line)["text"] for line in paths["code"].read_text().splitlines()]
    prose = [json.loads(line)["text"] for line in paths["prose"].read_text().splitlines()]
    assert len(code) == 12 and len(prose) == 12
    for src in code:
        ast.parse(src)  # real Python sources
    assert sum("def " in s or "class " in s for s in code) >= 10
    assert all(len(p) > 100 for p in prose) and sum(" the " in p for p in prose) >= 10


def test_prepare_demo_data_feeds_multidomain_data(tmp_path):
    demo = prepare_demo_data(tmp_path, max_docs_per_domain=30, vocab_size=256)
    tok = load_tokenizer(demo["tokenizer"])
    assert tok.vocab_size == 256 and tok.bos_id == 1
    assert "def" in tok.decode(tok.encode("def f(x): return x"))
    cfg = DataConfig(domains=[dict(name=k, prefixes=[v]) for k, v in demo["prefixes"].items()], seq_len=32,
                     weights_preset="uniform", valid_fraction=0.1)
    data = MultiDomainData(cfg, global_batch_size=4)
    batch = data.next_step()
    assert batch.tokens.shape == (4, 33) and int(batch.tokens.max()) < 256
    assert sum(batch.global_domain_counts.values()) == 4
    assert torch.cat(list(data.valid_batches("prose", 1, 2))).shape == (2, 33)
