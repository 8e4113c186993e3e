"""README: "Tensors stream one at a time" (import), and convert and export stream the model part by part: their
peak memory is a few layers, not the model. Measured in a child process (tests/construct/_peak_memory.py) as the
peak of its anonymous resident memory above where it started, on a 24-layer model saved in bf16 and written in
fp32 (one layer ~4.2 MB in fp32), so every tensor an operation holds is a copy, not a view of the mapped input.

A version that holds the whole model (e.g. reading every tensor before writing the first part) peaks at about
the model's size and fails here.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def peaks(tmp_path_factory):
    work = tmp_path_factory.mktemp("peak")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(HERE / "_peak_memory.py"), str(work)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(res)
    return res


@pytest.mark.parametrize("op,layers", [("import", 4), ("convert", 5), ("export", 6)])
def test_peak_memory_is_a_few_layers_not_the_model(peaks, op, layers):
    """import/convert: one part being built plus one being written (CheckpointWriter's background thread);
    export: one output shard (two layers here) plus the part being read, in fp32."""
    model, layer = peaks["model_bytes"], peaks["layer_bytes"]
    assert model > 20 * layer
    assert peaks[op] <= layers * layer, (op, peaks[op] / layer, "layers' worth")
