"""Shared test setup: skip `gpu` tests without CUDA; keep torch single-threaded-ish for 2-core CI."""
import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# test helpers (_train_helpers, kernel_cases, ...) are importable from any test directory; names are unique
for _d in sorted(Path(__file__).parent.iterdir()):
    if _d.is_dir() and not _d.name.startswith((".", "_")) and str(_d) not in sys.path:
        sys.path.append(str(_d))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() or os.environ.get("MOE_TEST_DEVICE") == "cpu":  # cpu: dry run of gpu tests
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
