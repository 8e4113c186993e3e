"""megatron-core's dataset pieces used here, imported once with its CPU-only warnings (no TE/Apex) silenced.

`indexed_dataset` gives the `.bin/.idx` builder and reader; `helpers.build_sample_idx` is the C++ packing
index (prebuilt in the wheel, works on CPU).
"""
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets import helpers as mcore_helpers  # noqa: F401
    from megatron.core.datasets.indexed_dataset import (  # noqa: F401
        DType,
        IndexedDataset,
        IndexedDatasetBuilder,
        get_bin_path,
        get_idx_path,
    )
