"""Ahead-of-time compile checks: every launch the public API makes, compiled for sm_90a / sm_80 on a CPU.

    python -m moe_kernels.aot [--full] [--target sm90 sm80] [--jobs N]     # prints the resource table

How: run `moe_mlp` / `topk_gating` forward and backward on 'meta' tensors of real sizes under
`_launch.recording(target)`; each recorded launch is specialised exactly as Triton's JIT would do it
(its own binder, for the named target instead of the current device) once per candidate autotune config,
and compiled with `triton.compile(..., target=GPUTarget("cuda", arch, 32))`. ptxas' own `-v` report gives
registers and spills, Triton's metadata the shared memory the launcher will request, and the SASS
(cuobjdump, shipped in Triton's wheel) whether wgmma (HGMMA) is used. All of it is a compile-time fact:
no GPU runs anything here. Results are cached per specialisation in `cache_dir()`.

Checks (`violations`): a compile error; a config over the target's shared-memory limit (the launch would
raise OutOfResources for it, or for all of them; sm80 configs are also held to the 99 KB of sm_86/sm_89,
which use the same lists); a register spill anywhere except in fp32 GEMMs (the fp32 correctness path may
spill but must launch); an sm_90 16-bit GEMM without wgmma.
Uses Triton 3.9's JIT internals (`create_function_from_signature`, `JITFunction._pack_args`).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from . import _aot_cases as _cases
from ._launch import SMEM_SM86, Launch

REGS_PER_SM, MAX_THREADS_PER_SM, MAX_CTAS_PER_SM = 65536, 2048, 32


@dataclass
class Resources:
    """What the compiler reports for one (kernel, flags, config, target) specialisation."""
    kernel: str
    target: str
    dtype: str        # element type of the first floating-point pointer argument
    flags: str        # launch constexprs that are not autotuned (BLOCK_M, SAVE, TWO, ...)
    config: str       # autotuned constexprs, warps, stages
    gemm: bool        # the kernel contains tl.dot
    regs: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem: int = 0     # dynamic shared memory the launcher requests (bytes)
    smem_limit: int = 0
    wgmma: bool = False
    wgmma_n: int = 0  # widest HGMMA N in the SASS (0: none)
    ctas_per_sm: int = 0
    compile_s: float = 0.0
    error: str = ""
    key: str = ""     # specialisation hash (cache file name)

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads

    @property
    def fits(self) -> bool:
        return not self.error and self.smem <= self.smem_limit


def cache_dir() -> Path:
    root = os.environ.get("MOE_KERNELS_AOT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "moe_kernels_aot")
    return Path(root)


_BINDERS: dict = {}


def _binder(fn, arch: int):
    key = (id(fn), arch)
    if key not in _BINDERS:
        backend = make_backend(GPUTarget("cuda", arch, 32))
        _BINDERS[key] = (backend, create_function_from_signature(fn.signature, fn.params, backend))
    return _BINDERS[key]


def _fmt_config(cfg) -> str:
    if cfg is None:
        return "fixed"
    short = {"BLOCK_N": "N", "BLOCK_K": "K", "BLOCK_MO": "M", "BLOCK_R": "R"}
    parts = [f"{short.get(k, k)}{v}" for k, v in cfg.kwargs.items()]
    return " ".join(parts + [f"w{cfg.num_warps}", f"s{cfg.num_stages}"])


@dataclass
class Spec:
    """One specialisation: the ASTSource and options the JIT would compile, plus labels."""
    fn: object
    arch: int
    src: object
    options: dict
    key: str
    kernel: str
    dtype: str
    flags: str
    config: str
    smem_limit: int
    smem_per_sm: int


def specialize(launch: Launch, cfg) -> Spec:
    fn, target = launch.kernel, launch.target
    kwargs = dict(launch.kwargs)
    if cfg is not None:
        kwargs.update(cfg.all_kwargs())
    backend, binder = _binder(fn, target.arch)
    bound, spec, opts = binder(*launch.args, **kwargs)
    options, sig, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    src = ASTSource(fn, sig, constexprs, attrs)
    dtype = next((t[1:] for t in sig.values() if isinstance(t, str) and t[:2] in ("*b", "*f")), "-")
    tuned = set(cfg.kwargs) if cfg is not None else set()
    flag_names = [p.name for p in fn.params if p.is_constexpr and p.name not in tuned]
    flags = " ".join(f"{n}={_short(bound[n])}" for n in flag_names if n in launch.kwargs)
    opt = {k: v for k, v in sorted(options.__dict__.items())}
    blob = json.dumps([triton.__version__, fn.cache_key, repr(sig), repr(sorted(constexprs.items())),
                       repr(sorted(attrs.items())), repr(opt), target.arch], default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()[:32]
    return Spec(fn, target.arch, src, opt, key, fn.fn.__name__, dtype, flags, _fmt_config(cfg),
                target.smem_limit, target.smem_per_sm)


def _short(v) -> str:
    if isinstance(v, bool):
        return str(int(v))
    return str(v)


_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_HGMMA = re.compile(r"HGMMA\.(\d+)x(\d+)x(\d+)")


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def ctas_per_sm(regs: int, num_warps: int, smem: int, smem_per_sm: int) -> int:
    """Resident CTAs per SM from registers, threads and shared memory (CUDA occupancy rules: registers
    allocated per warp in units of 256, 1 KB of shared memory reserved per CTA)."""
    threads = 32 * num_warps
    regs_per_cta = -(-max(regs, 1) * 32 // 256) * 256 * num_warps
    by_regs = REGS_PER_SM // regs_per_cta
    by_threads = MAX_THREADS_PER_SM // threads
    by_smem = smem_per_sm // (smem + 1024)
    return max(0, min(by_regs, by_threads, by_smem, MAX_CTAS_PER_SM))


def _compile(spec: Spec) -> Resources:
    res = Resources(spec.kernel, f"sm{spec.arch}", spec.dtype, spec.flags, spec.config, False,
                    smem_limit=spec.smem_limit)
    log = io.StringIO()
    t0 = time.perf_counter()
    old = knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = True, True  # ptxas runs, prints -v
    try:
        with contextlib.redirect_stdout(log):
            k = triton.compile(spec.src, target=GPUTarget("cuda", spec.arch, 32), options=spec.options)
    except Exception as exc:  # noqa: BLE001 - any compiler failure is a finding
        res.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        return res
    finally:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = old
    res.compile_s = round(time.perf_counter() - t0, 2)
    text = log.getvalue()
    m, r = _PTXAS_SPILL.search(text), _PTXAS_REGS.search(text)
    if m is None or r is None:
        res.error = "no ptxas -v report"
        return res
    res.spill_stores, res.spill_loads = int(m.group(2)), int(m.group(3))
    res.regs = int(r.group(1))
    res.smem = int(k.metadata.shared)
    res.gemm = "tt.dot" in k.asm["ttir"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    shapes = [int(n) for _, n, _ in _HGMMA.findall(sass)]
    res.wgmma, res.wgmma_n = bool(shapes), max(shapes, default=0)
    res.ctas_per_sm = ctas_per_sm(res.regs, spec.options["num_warps"], res.smem, spec.smem_per_sm)
    return res


def compile_spec(spec: Spec, use_cache: bool = True) -> Resources:
    path = cache_dir() / f"{spec.key}.json"
    if use_cache and path.exists():
        res = Resources(**json.loads(path.read_text()))
        res.flags, res.config, res.key = spec.flags, spec.config, spec.key
        return res
    res = _compile(spec)
    res.key = spec.key
    if use_cache and not res.error:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(res)))
        os.replace(tmp, path)
    return res


@dataclass
class LaunchReport:
    launch: Launch
    scenario: str
    results: list  # Resources per candidate config


_PENDING: list = []  # specs a forked worker compiles, by index (Spec holds JIT functions, which do not pickle)


def _compile_pending(args: tuple) -> Resources:
    i, use_cache = args
    return compile_spec(_PENDING[i], use_cache)


def compile_specs(specs: list, use_cache: bool = True, jobs: int = 1) -> dict:
    """key -> Resources for distinct specs, in `jobs` forked processes (each compile is single-threaded:
    Triton's passes, then ptxas and cuobjdump as subprocesses; ptxas' report is read from the process's stdout,
    which is why this uses processes, not threads)."""
    unique = list({s.key: s for s in specs}.values())
    if jobs <= 1 or len(unique) <= 1:
        return {s.key: compile_spec(s, use_cache) for s in unique}
    import multiprocessing

    _PENDING[:] = unique
    try:
        with multiprocessing.get_context("fork").Pool(min(jobs, len(unique))) as pool:
            results = pool.map(_compile_pending, [(i, use_cache) for i in range(len(unique))], chunksize=1)
    finally:
        _PENDING.clear()
    return {s.key: r for s, r in zip(unique, results)}


def compile_launches(launches: list, scenario: str, done: dict | None = None, use_cache=True,
                     jobs: int = 1) -> list:
    """LaunchReports for the recorded launches; `done` (key -> Resources) shares compiles across calls."""
    done = {} if done is None else done
    specs = [[specialize(ln, cfg) for cfg in (ln.configs if ln.configs is not None else [None])]
             for ln in launches]
    done.update(compile_specs([s for row in specs for s in row if s.key not in done], use_cache, jobs))
    return [LaunchReport(ln, scenario, [done[s.key] for s in row]) for ln, row in zip(launches, specs)]


def violations(reports: list) -> list[str]:
    """One line per broken rule (see the module docstring)."""
    out = []
    for rep in reports:
        where = f"[{rep.scenario}] {rep.launch.target.name} {rep.launch.label}"
        if not any(r.fits for r in rep.results):
            out.append(f"{where}: no config fits the {rep.launch.target.smem_limit} B shared-memory limit "
                       "(OutOfResources at launch)")
        for r in rep.results:
            what = f"{where} {r.flags} [{r.config}] {r.dtype}"
            if r.error:
                out.append(f"{what}: compile error {r.error}")
                continue
            if r.smem > r.smem_limit:
                out.append(f"{what}: needs {r.smem} B shared memory > {r.smem_limit}")
            elif r.target == "sm80" and r.smem > SMEM_SM86:  # the sm80 lists also serve sm_86/89 GPUs
                out.append(f"{what}: needs {r.smem} B shared memory > {SMEM_SM86} (sm_86/sm_89)")
            if r.spills and not (r.gemm and r.dtype == "fp32"):
                out.append(f"{what}: spills {r.spill_stores} B stores / {r.spill_loads} B loads per thread")
            if r.target == "sm90" and r.gemm and r.dtype in ("bf16", "fp16") and not r.wgmma:
                out.append(f"{what}: no wgmma (HGMMA) in an sm_90 16-bit GEMM")
    return sorted(set(out))


_HIDE_FLAGS = ("UPCAST=0", "GROUP_M=16")  # the same in every GPU launch


def table(reports: list) -> str:
    """Markdown resource table, one row per distinct specialisation (kernel, flags, config, and the
    size attributes Triton specialises on), labelled with the first case that launched it."""
    seen, rows = set(), []
    for rep in reports:
        for r in rep.results:
            if r.key not in seen:
                seen.add(r.key)
                rows.append((rep.scenario, r))
    rows.sort(key=lambda sr: (sr[1].target, sr[1].kernel, sr[1].dtype, sr[1].flags, sr[1].config, sr[0]))
    lines = ["| target | kernel | dtype | flags | config | first case | regs | spill st/ld (B) | smem (KB) "
             "| CTAs/SM | wgmma N |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for case, r in rows:
        flags = " ".join(f for f in r.flags.split() if f not in _HIDE_FLAGS)
        head = f"| {r.target} | {r.kernel} | {r.dtype} | {flags} | {r.config} | {case} |"
        if r.error:
            lines.append(f"{head} error: {r.error} | | | | |")
            continue
        wg = str(r.wgmma_n) if r.wgmma else ("-" if r.gemm and r.target == "sm90" else "")
        over = " (over)" if r.smem > r.smem_limit else ""
        lines.append(f"{head} {r.regs} | {r.spill_stores}/{r.spill_loads} | {r.smem / 1024:.0f}{over} | "
                     f"{r.ctas_per_sm} | {wg} |")
    return "\n".join(lines)


def summary(reports: list) -> str:
    """Markdown table, one row per (target, kernel, dtype, flags; all flags of non-GEMM kernels together):
    specialisations compiled (configs x sizes x flags), and the range of registers, spills, shared
    memory, CTAs/SM and wgmma N over them."""
    groups: dict = {}
    for rep in reports:
        for r in rep.results:
            flags = " ".join(f for f in r.flags.split() if f not in _HIDE_FLAGS)
            if not r.gemm:  # gating / combine: one row over all their flag combinations
                flags = "all"
            groups.setdefault((r.target, r.kernel, r.dtype, flags), {})[r.key] = r
    lines = ["| target | kernel | dtype | flags | compiled | regs | max spill st+ld (B) | max smem (KB) | CTAs/SM "
             "| wgmma N |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (t, k, d, f), by_key in sorted(groups.items()):
        rs = [r for r in by_key.values() if not r.error]
        if len(rs) < len(by_key):
            lines.append(f"| {t} | {k} | {d} | {f} | {len(by_key)} | {len(by_key) - len(rs)} errors | | | | |")
            continue
        regs = sorted({r.regs for r in rs})
        ctas = sorted({r.ctas_per_sm for r in rs})
        wg = sorted({r.wgmma_n for r in rs if r.wgmma})
        wg_s = "/".join(map(str, wg)) if wg else ("-" if t == "sm90" and any(r.gemm for r in rs) else "")
        lines.append(f"| {t} | {k} | {d} | {f} | {len(rs)} | {regs[0]}-{regs[-1]} | {max(r.spills for r in rs)} | "
                     f"{max(r.smem for r in rs) / 1024:.0f} | {ctas[0]}-{ctas[-1]} | {wg_s} |")
    return "\n".join(lines)


def run(cases, targets, use_cache=True, log=None, jobs: int = 1) -> list:
    """LaunchReports for every case of `_aot_cases` on every target ("sm90", "sm80"), compiling each distinct
    specialisation once, in `jobs` processes."""
    recorded = []
    for tname in targets:
        for case in cases:
            if log:
                log(f"{tname} {case.name}")
            recorded.append((case.name, _cases.record(case, _cases.TARGETS[tname])))
    specs = [specialize(ln, cfg) for _, lns in recorded for ln in lns
             for cfg in (ln.configs if ln.configs is not None else [None])]
    done = compile_specs(specs, use_cache, jobs)
    return [rep for name, lns in recorded for rep in compile_launches(lns, name, done, use_cache)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Compile every moe_kernels launch for sm_90a / sm_80 on this CPU "
                                 "and print the resource table (compile-time facts, no GPU).")
    ap.add_argument("--full", action="store_true", help="the whole matrix (slow: fp32 configs take minutes)")
    ap.add_argument("--target", nargs="+", default=list(_cases.TARGETS), choices=list(_cases.TARGETS))
    ap.add_argument("--summary", action="store_true", help="one row per kernel and flags instead of per config")
    ap.add_argument("--no-cache", action="store_true", help=f"ignore and do not write {cache_dir()}")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile in this many processes")
    args = ap.parse_args(argv)
    reports = run(_cases.FULL if args.full else _cases.DEFAULT, args.target, not args.no_cache,
                  log=lambda m: print(m, file=sys.stderr), jobs=args.jobs)
    print(summary(reports) if args.summary else table(reports))
    bad = violations(reports)
    for line in bad:
        print("VIOLATION", line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
