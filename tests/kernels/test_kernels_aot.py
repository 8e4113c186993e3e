"""Ahead-of-time compile checks for sm_90a and sm_80 on the CPU (moe_kernels.aot; no GPU needed).

The launches come from the public API run forward and backward on meta tensors (recorded, not run), so
they are the ones a GPU of that target would make: same kernels, flags, BLOCK_M and autotune lists.
Default suite: every kernel and launch flag in bf16 at real sizes on both targets, plus the riskiest
fp32 launches (a few minutes cold on 2 cores; results cached in moe_kernels.aot.cache_dir()).
`-m slow`: the whole matrix (all dtypes and sizes). Both print the resource table (run with -s).
"""
import dataclasses
import os

import pytest
import torch

from _deps import require

triton = require("triton")

from moe_kernels import _aot_cases as cases  # noqa: E402
from moe_kernels import _configs  # noqa: E402
from moe_kernels import aot  # noqa: E402
from moe_kernels._launch import SM80, SM90, recording  # noqa: E402

TARGETS = ["sm90", "sm80"]


def _signature(rep):
    k = rep.launch.kwargs
    name = rep.launch.label
    if name == "rowgemm_kernel":
        name += ":dx" if k["TWO"] else ":down"
    elif name == "dw_kernel":
        name += ":dw2" if k["A_GATHER"] else ":dw13"
    elif name == "up_kernel":
        name += f":save{int(k['SAVE'])}"
    return rep.launch.target.name, name, k.get("BLOCK_M")


def test_recording_captures_a_training_step_without_running_it():
    case = cases.MLPCase("t", 16384, 4096, 688, 16, 4)
    launches = cases.record(case, SM90)
    names = [ln.label for ln in launches]
    assert names == ["up_kernel", "rowgemm_kernel", "combine_kernel", "dh_kernel", "rowgemm_kernel",
                     "combine_kernel", "dw_kernel", "dw_kernel", "dw_kernel"]
    up = launches[0]
    assert up.kwargs["BLOCK_M"] == 128 and up.kwargs["SAVE"] is True  # 65536 pairs >= 1024 * 16 experts
    assert up.configs == _configs.configs("up", SM90, torch.bfloat16, 128)
    assert all(t.device.type == "meta" for t in up.args if isinstance(t, torch.Tensor))
    small = cases.record(dataclasses.replace(case, T=2048, grad=False), SM80)
    assert [ln.label for ln in small] == ["up_kernel", "rowgemm_kernel", "combine_kernel"]
    assert small[0].kwargs["BLOCK_M"] == 64 and small[0].kwargs["SAVE"] is False
    with recording(SM80):
        with pytest.raises(RuntimeError, match="nest"):
            with recording(SM90):
                pass


def test_autotune_keys_name_kernel_arguments():
    mlp = _mlp_module()
    for tuned in (mlp._UP, mlp._ROW, mlp._DH, mlp._DW):  # triton.autotune rejects unknown names
        triton.autotune(configs=[triton.Config({})], key=tuned.key)(tuned.kernel)


def test_autotune_choices_report_what_each_tuner_picked():
    from types import SimpleNamespace

    from moe_kernels import _launch

    cfg = triton.Config({"BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=4)
    up = _mlp_module()._UP
    saved = dict(up._tuners)
    try:
        up._tuners[("fake",)] = SimpleNamespace(cache={(4096, 688, 128, True, "torch.bfloat16"): cfg})
        got = _launch.autotune_choices()["up_kernel"]
        assert got == {repr((4096, 688, 128, True, "torch.bfloat16")): str(cfg)}
    finally:
        up._tuners.clear()
        up._tuners.update(saved)


def _mlp_module():
    import importlib

    return importlib.import_module("moe_kernels.moe_mlp")  # the attribute moe_kernels.moe_mlp is the function


def test_ctas_per_sm_by_hand():
    # 8 warps at 128 regs: 8 * 32 * 128 = 32768 registers per CTA -> 2 CTAs in 65536
    assert aot.ctas_per_sm(128, 8, 64 * 1024, 233472) == 2
    # 130 regs round up to 136 per thread: 34816 per CTA -> 1
    assert aot.ctas_per_sm(130, 8, 1024, 233472) == 1
    # shared memory bound: 100 KB + 1 KB reserved per CTA in 228 KB -> 2
    assert aot.ctas_per_sm(32, 4, 100 * 1024, 233472) == 2
    # threads bound: 2048 / 128 = 16
    assert aot.ctas_per_sm(16, 4, 0, 233472) == 16


def test_checker_flags_spills_shared_memory_and_missing_wgmma():
    """Known-bad configs on a real recorded launch must be reported (the checker is not vacuous)."""
    case = cases.MLPCase("t", 16384, 4096, 688, 16, 4)
    up = next(ln for ln in cases.record(case, SM80) if ln.label == "up_kernel")
    bad = [triton.Config({"BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=3),  # two 128x128 acc, 4 warps
           triton.Config({"BLOCK_N": 64, "BLOCK_K": 128}, num_warps=8, num_stages=5)]  # 4 x 64 KB buffers > 163 KB
    rep = aot.compile_launches([dataclasses.replace(up, configs=bad)], "bad")
    msgs = aot.violations(rep)
    assert any("N128 K32 w4 s3" in m and "spills" in m for m in msgs), msgs
    assert any("N64 K128 w8 s5" in m and "shared memory" in m for m in msgs), msgs
    assert any("no config fits" in m for m in msgs) is False  # the first one fits (it only spills)
    over = aot.compile_launches([dataclasses.replace(up, configs=bad[1:])], "over")
    assert any("no config fits" in m for m in aot.violations(over))
    r = rep[0].results[0]
    # what makes it bad: it spills although the register file per thread is not exceeded (ptxas caps at 255, the
    # hardware limit; how many of them it uses before spilling depends on the Triton/ptxas version)
    assert 0 < r.regs <= 255 and r.spill_stores > 0 and r.smem < SM80.smem_limit and not r.wgmma
    fake = dataclasses.replace(r, target="sm90")  # a 16-bit GEMM on sm_90 without HGMMA must be flagged
    assert any("no wgmma" in m for m in aot.violations([aot.LaunchReport(up, "fake", [fake])]))


def test_running_the_module_loads_one_copy_of_it():
    """`python -m moe_kernels.aot` runs aot as __main__; the cases module must not import it again as
    moe_kernels.aot (a second copy with its own caches and binders)."""
    import subprocess
    import sys

    code = ("import runpy, sys\n"
            "sys.argv = ['moe_kernels.aot', '--help']\n"
            "try:\n"
            "    runpy.run_module('moe_kernels.aot', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as exc:\n"
            "    assert exc.code == 0, exc.code\n"
            "print('copies', 'moe_kernels.aot' in sys.modules, 'moe_kernels._aot_cases' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--full" in proc.stdout  # the CLI's help ran
    assert proc.stdout.strip().splitlines()[-1] == "copies False True", proc.stdout[-500:]


def _check(case_list):
    reports = aot.run(case_list, TARGETS, jobs=os.cpu_count() or 1)  # compiles in parallel processes
    print("\n" + aot.table(reports))
    bad = aot.violations(reports)
    assert not bad, "\n".join(bad)
    return reports


def test_default_launches_compile_clean_for_sm90_and_sm80():
    reports = _check(cases.DEFAULT)
    seen = {_signature(r) for r in reports}
    for t in TARGETS:
        for bm in (64, 128):
            for name in ("up_kernel:save1", "up_kernel:save0", "rowgemm_kernel:down", "rowgemm_kernel:dx",
                         "dh_kernel"):
                assert (t, name, bm) in seen, (t, name, bm)
        for name in ("dw_kernel:dw13", "dw_kernel:dw2", "combine_kernel", "gating_fwd_kernel", "gating_bwd_kernel"):
            assert any(s[:2] == (t, name) for s in seen), (t, name)
    for r in (r for rep in reports for r in rep.results):
        if r.target == "sm90" and r.gemm and r.dtype == "bf16":
            assert r.wgmma_n >= 64, r
        if r.dtype == "bf16":
            assert r.spills == 0 and r.smem <= r.smem_limit
    assert any(r.dtype == "fp32" and r.gemm for rep in reports for r in rep.results)


@pytest.mark.slow
def test_full_matrix_compiles_clean_for_sm90_and_sm80():
    _check(cases.FULL)


def test_fp_fusion_is_explicit_in_every_launch_and_compile():
    """Our numerics must not change when Triton flips its FP-fusion default (off from 3.10): every launch passes
    enable_fp_fusion=True, and the compile options the AOT tool (and the JIT) derive from it carry it, without
    Triton's 'TRITON_DEFAULT_FP_FUSION is unset' warning."""
    import warnings

    launches = cases.record(cases.MLPCase("t", 2048, 256, 64, 8, 2), SM90) + \
        cases.record(cases.GateCase("g", 2048, 8, 2, "sigmoid", bias=True), SM80)
    assert {ln.label for ln in launches} >= {"up_kernel", "dw_kernel", "combine_kernel"}
    assert launches and all(ln.kwargs.get("enable_fp_fusion") is True for ln in launches)
    saved = os.environ.pop("TRITON_DEFAULT_FP_FUSION", None)
    try:
        from triton import knobs
        knobs.language.default_fp_fusion = False  # what Triton 3.10 will default to
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for ln in launches:
                spec = aot.specialize(ln, (ln.configs or [None])[0])
                assert spec.options["enable_fp_fusion"] is True, (ln.label, spec.options)
        assert not [w for w in caught if "FP_FUSION" in str(w.message)], [str(w.message) for w in caught]
    finally:
        knobs.language.default_fp_fusion = True
        if saved is not None:
            os.environ["TRITON_DEFAULT_FP_FUSION"] = saved
