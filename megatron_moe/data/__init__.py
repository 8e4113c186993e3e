"""Data pipeline: tokenize to megatron-core indexed datasets, pack sequences, sample domains (docs/data.md).

Names are imported lazily so that light helpers (tokenizer training) do not pull in megatron-core.
"""
import importlib

_EXPORTS = {
    "MultiDomainData": "multidomain", "RankBatch": "multidomain",
    "DomainDataset": "dataset", "open_indexed": "indexed", "check_vocab": "indexed",
    "max_token_id": "indexed",
    "DomainSampler": "sampler", "sheared_update": "sampler", "paper_update": "sampler",
    "DataError": "presets", "WEIGHT_PRESETS": "presets", "REF_LOSS_PRESETS": "presets",
    "preset_weights": "presets", "resolve_weights": "presets", "resolve_ref_losses": "presets",
    "preprocess_files": "preprocess", "PreprocessError": "preprocess", "PreprocessStats": "preprocess",
    "load_tokenizer": "tokenizer", "Tokenizer": "tokenizer", "TokenizerError": "tokenizer",
    "train_sentencepiece": "spm_train", "train_sentencepiece_from_files": "spm_train",
    "build_demo_corpus": "local_corpus", "prepare_demo_data": "local_corpus",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
