"""Fixtures for data tests: a tiny sentencepiece tokenizer, trained once per session."""
import pytest

from _data_helpers import SENTENCES


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory):
    from megatron_moe.data.spm_train import train_sentencepiece

    out = tmp_path_factory.mktemp("spm") / "tok.model"
    texts = [f"{s} {i}" for i in range(40) for s in SENTENCES]
    return str(train_sentencepiece(texts, out, vocab_size=120))
