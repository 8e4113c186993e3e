"""Where every moe_kernels launch goes: the target of a tensor, per-target autotuning, and a recorder.

A Target names the compile target a launch is for ("sm90": Hopper, wgmma, and datacenter Blackwell;
"sm80": Ampere and the other GPUs; "interp": Triton's CPU interpreter) with its shared-memory limits. The launchers
(moe_mlp.py, gating.py) pick tile sizes and autotune spaces from it (_configs.py) and call `launch` or a
`Tuned` kernel here, and nothing else launches a kernel.

`recording(target)` turns every launch into a `Launch` record (kernel, grid, arguments, candidate configs)
instead of running it, and makes the public API take the Triton path for 'meta' tensors. Running
`moe_mlp` / `topk_gating` forward and backward on meta tensors of real sizes then yields exactly the
launches a GPU of that target would run, which moe_kernels.aot compiles for that target on a CPU.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import triton

__all__ = ["Target", "SM90", "SM80", "INTERP", "target_of", "recording", "is_recording", "Launch", "Tuned",
           "launch", "autotune_choices", "COMPILE_OPTIONS"]

# Compile options every launch passes explicitly, so that a Triton upgrade cannot change our numerics by changing a
# default. FP fusion (a*b+c as one fused multiply-add, one rounding) is what every parity tolerance, benchmark and
# resource table here was measured with; Triton 3.9 warns that its default flips to off in 3.10.
COMPILE_OPTIONS = {"enable_fp_fusion": True}


@dataclass(frozen=True)
class Target:
    name: str        # "sm90" | "sm80" | "interp": which config family the launchers use
    arch: int        # compute capability as Triton's GPUTarget wants it (90, 80; 0 for the interpreter)
    smem_limit: int  # opt-in shared memory per block, bytes (what Triton's launcher checks)
    smem_per_sm: int  # shared memory per SM, bytes (for the CTAs-per-SM estimate)
    num_sms: int     # SMs of the reference part (H100 SXM / A100 SXM), for reports only


SM90 = Target("sm90", 90, 232448, 233472, 132)
SM80 = Target("sm80", 80, 166912, 167936, 108)
SMEM_SM86 = 101376  # sm_86 / sm_89 (and sm_120) opt-in limit: the sm80 lists are checked against it too
INTERP = Target("interp", 0, 0, 0, 1)


@functools.lru_cache(maxsize=None)
def _cuda_target(index: int) -> Target:
    """sm90 lists for Hopper and datacenter Blackwell (>= 227 KB shared memory per block); sm80 lists,
    which also fit the 99 KB of sm_86 / sm_89 / sm_120, for everything else."""
    major, _minor = torch.cuda.get_device_capability(index)
    return SM90 if major in (9, 10) else SM80


def target_of(t: torch.Tensor) -> Target:
    """The compile target for kernels on t's device (the recorder's target while recording)."""
    if _RECORDER is not None:
        return _RECORDER.target
    if t.is_cuda:
        return _cuda_target(t.device.index if t.device.index is not None else torch.cuda.current_device())
    return INTERP


@dataclass
class Launch:
    """One kernel launch as the launcher would make it: `kernel[grid](*args, **kwargs, **config)` for
    the config the autotuner picks among `configs` (None: a fixed launch, everything is in kwargs)."""
    kernel: Any
    grid: Any
    args: tuple
    kwargs: dict
    configs: Optional[list]
    target: Target
    label: str = ""


@dataclass
class _Recorder:
    target: Target
    launches: list = field(default_factory=list)


_RECORDER: Optional[_Recorder] = None


@contextlib.contextmanager
def recording(target: Target):
    """Record launches instead of running them; yields the list they are appended to."""
    global _RECORDER
    if _RECORDER is not None:
        raise RuntimeError("moe_kernels: recording() does not nest")
    _RECORDER = _Recorder(target)
    try:
        yield _RECORDER.launches
    finally:
        _RECORDER = None


def is_recording() -> bool:
    return _RECORDER is not None


def _label(kernel) -> str:
    return kernel.fn.__name__


def launch(kernel, grid, *args, **kwargs):
    """A fixed-config launch (small latency-bound kernels: gating, combine)."""
    kwargs = {**kwargs, **COMPILE_OPTIONS}
    if _RECORDER is not None:
        _RECORDER.launches.append(Launch(kernel, grid, args, kwargs, None, _RECORDER.target, _label(kernel)))
        return
    kernel[grid](*args, **kwargs)


_ALL_TUNED: list = []


def autotune_choices() -> dict:
    """{kernel name: {tuning key: chosen config}} of every autotuning done in this process (GPU runs;
    the benchmarks record it next to their timings)."""
    out: dict = {}
    for t in _ALL_TUNED:
        for tuner in t._tuners.values():
            for key, cfg in tuner.cache.items():
                out.setdefault(t.kernel.fn.__name__, {})[repr(key)] = str(cfg)
    return out


class Tuned:
    """A JIT kernel autotuned over a config list chosen per launch (per target, dtype and BLOCK_M).

    Under the interpreter the first config runs as is (autotune with several configs fails there).
    One triton.autotune wrapper per distinct config list; the tuning key holds feature sizes and flags,
    never the token count.
    """

    def __init__(self, kernel, key: list[str]):
        self.kernel = kernel
        self.key = key
        self._tuners: dict = {}
        _ALL_TUNED.append(self)

    def __call__(self, grid_fn: Callable[[dict], tuple], target: Target, configs: list, *args, **kwargs):
        kwargs = {**kwargs, **COMPILE_OPTIONS}
        if _RECORDER is not None:
            _RECORDER.launches.append(Launch(self.kernel, grid_fn, args, kwargs, list(configs), target,
                                             _label(self.kernel)))
            return
        if target is INTERP:
            meta = dict(configs[0].kwargs)
            self.kernel[grid_fn(meta)](*args, **kwargs, **meta)
            return
        cfgs = tuple(configs)
        tuner = self._tuners.get(cfgs)
        if tuner is None:
            tuner = self._tuners[cfgs] = triton.autotune(configs=list(cfgs), key=self.key)(self.kernel)
        tuner[grid_fn](*args, **kwargs)
