"""Pipeline parallelism: this rank's stage of the model, run by torch.distributed.pipelining's 1F1B schedule.

    runner = PipelineRunner(cfg, ps, model, autocast, on_forward=moe_stats.collect)
    per_micro, per_seq_B = runner.forward_backward(batch, n_micro)   # a step's micro-batches, forward + backward
    runner.forward_only(batch, n_micro)                              # the global-balance pre-pass (no gradients)
    per_seq_B = runner.eval_losses(tokens_BS1, n_micro)              # validation

Stage s holds decoder layers cfg.parallel.stage_range(L, s) (model/llama.py: `stage_forward`); the first stage
also the embedding, the last the final norm and LM head. The micro-batches of one optimizer step (gradient
accumulation) are the pipeline's micro-batches; torch's Schedule1F1B runs them (warm-up forwards, one forward /
one backward in the steady state, cool-down backwards), so stage s keeps at most min(pp - s, n_micro)
micro-batches' activations alive. The last stage's loss function is the model's own (`lm_loss`) divided by the
number of micro-batches of the step, exactly as the sequential path scales it, and the MoE aux/z losses reach the gradient
through their injector (model/moe/aux.py) inside each stage, so gradients equal the sequential ones.

With parallel.pp_flush = F > 0 the step's micro-batches go through the schedule F at a time (gradients accumulate
over the calls; each flush fills and drains the pipeline once), so torch's per-micro-batch receive buffers stay F.

What crosses a stage boundary is the residual stream [micro, S_l, D] in its compute dtype (fp32 under autocast,
which keeps the residual stream in fp32; bf16 with FSDP2's bf16 weights), with static shapes given to torch (no
shape-inference pass). Every stage also receives the micro-batch's global sample indices as a keyword input, so
router noise is keyed by global sample exactly as without pipelining (model/moe/noise.py).

Results live on the last stage: `forward_backward` and `eval_losses` return None elsewhere; the trainer sums what
it logs over the pipeline group.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import nn

from ..config import Config
from ..model.llama import LlamaModel, lm_loss
from ..parallel import ParallelState
from .moe_hooks import moe_layers, set_noise_context


class StageModule(nn.Module):
    """What torch's PipelineStage runs: noise context, autocast, the model's stage_forward, the boundary dtype."""

    def __init__(self, model: LlamaModel, seed: int, autocast, boundary_dtype: torch.dtype,
                 on_forward: Optional[Callable[[], None]] = None):
        super().__init__()
        self.model = model
        self.seed, self.autocast, self.boundary_dtype, self.on_forward = seed, autocast, boundary_dtype, on_forward
        self.moe = moe_layers(model)
        self.step = 0  # optimizer step of the batch being run (noise key)

    def forward(self, x: torch.Tensor, samples_B: torch.Tensor) -> torch.Tensor:
        set_noise_context(self.moe, self.seed, self.step, int(samples_B[0]))
        with self.autocast():
            out = self.model.stage_forward(x)
        if self.on_forward is not None and self.model.training and torch.is_grad_enabled():
            self.on_forward()
        if self.model.is_last:
            return out.float()  # local logits, as LlamaModel.loss takes them
        if out.dtype != self.boundary_dtype:
            raise RuntimeError(f"pipeline stage output is {out.dtype}, expected {self.boundary_dtype}")
        return out


class PipelineRunner:
    def __init__(self, cfg: Config, ps: ParallelState, model: LlamaModel, autocast=contextlib.nullcontext,
                 boundary_dtype: torch.dtype = torch.float32, on_forward: Optional[Callable[[], None]] = None):
        self.cfg, self.ps, self.model = cfg, ps, model
        self.device = ps.device
        self.module = StageModule(model, cfg.train.seed, autocast, boundary_dtype, on_forward)
        self.schedules: dict[tuple, object] = {}
        self.per_seq: list[torch.Tensor] = []
        self.micro_losses: list[torch.Tensor] = []  # each micro-batch's mean token loss (last stage), last call
        self.n_micro = 1  # micro-batches of the step: the loss divisor

    # ------------------------------------------------------------------------------------ schedules
    def _schedule(self, n_micro: int, micro: int, S: int, kind: str):
        """One PipelineStage + schedule per (micro-batches, shape, kind): a stage object holds per-micro-batch
        buffers, so differently sized calls (training, validation) each get their own. Training runs 1F1B (which
        needs at least pp micro-batches: Config.validate checks it); validation, forward only, runs GPipe, where
        1F1B would be the same order of forwards and any number of micro-batches is allowed."""
        key = (n_micro, micro, S, kind)
        if key not in self.schedules:
            from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

            ps, cfg = self.ps, self.cfg
            S_l = S // ps.tp_size if ps.sp else S
            D, V = cfg.model.hidden_size, cfg.model.vocab_size // ps.tp_size
            meta = dict(device="meta")
            hidden = torch.empty(micro, S_l, D, dtype=self.module.boundary_dtype, requires_grad=True, **meta)
            inputs = torch.empty(micro, S, dtype=torch.long, **meta) if self.model.is_first else hidden
            outputs = torch.empty(micro, S, V, dtype=torch.float32, **meta) if self.model.is_last else hidden
            stage = PipelineStage(self.module, ps.pp_rank, ps.pp_size, self.device, input_args=inputs,
                                  output_args=outputs, group=ps.pp_group)
            kind_cls = Schedule1F1B if kind == "train" else ScheduleGPipe
            self.schedules[key] = kind_cls(stage, n_micro, loss_fn=self._loss, scale_grads=False)
        return self.schedules[key]

    def _loss(self, logits_BSV: torch.Tensor, labels_BS: torch.Tensor) -> torch.Tensor:
        """The last stage's loss of one micro-batch: the model's loss / micro-batches (as the sequential path)."""
        loss, per_seq_B = lm_loss(logits_BSV, labels_BS, self.ps)
        self.per_seq.append(per_seq_B.detach())
        self.micro_losses.append(loss.detach())
        return loss / self.n_micro

    def _run(self, tokens_BS1: torch.Tensor, samples_B: torch.Tensor, n_micro: int, kind: str, step: int,
             train: bool, flush: int = 0) -> Optional[torch.Tensor]:
        """All n_micro micro-batches, `flush` at a time (0: in one call)."""
        B, S1 = tokens_BS1.shape
        micro, flush = B // n_micro, flush or n_micro
        schedule = self._schedule(flush, micro, S1 - 1, kind)
        self.module.step, self.n_micro, self.per_seq, self.micro_losses = step, n_micro, [], []
        tokens_BS1, samples_B = tokens_BS1.to(self.device), samples_B.to(self.device)
        for rows in torch.arange(B).split(flush * micro):
            part_BS1, part_B = tokens_BS1[rows], samples_B[rows]
            args = (part_BS1[:, :-1],) if self.model.is_first else ()
            target = part_BS1[:, 1:] if self.model.is_last else None
            if train:
                schedule.step(*args, target=target, samples_B=part_B, return_outputs=False)
            else:
                with torch.no_grad():
                    schedule.eval(*args, target=target, samples_B=part_B)
        return torch.cat(self.per_seq) if self.model.is_last else None

    # ---------------------------------------------------------------------------------------- API
    def forward_backward(self, batch, n_micro: int) -> Optional[torch.Tensor]:
        """Forward + backward of the step's micro-batches; the per-sequence losses [B] on the last stage."""
        samples_B = batch.first_sample + torch.arange(batch.tokens.shape[0])
        return self._run(batch.tokens, samples_B, n_micro, "train", batch.step, train=True,
                         flush=self.cfg.parallel.pp_flush)

    def forward_only(self, batch, n_micro: int) -> None:
        """The step's micro-batches forward without gradients (the global-balance pre-pass)."""
        samples_B = batch.first_sample + torch.arange(batch.tokens.shape[0])
        self._run(batch.tokens, samples_B, n_micro, "train", batch.step, train=False,
                  flush=self.cfg.parallel.pp_flush)

    def eval_losses(self, tokens_BS1: torch.Tensor, n_micro: int) -> Optional[torch.Tensor]:
        """Per-sequence losses [B] of validation sequences (model in eval mode), on the last stage."""
        samples_B = torch.arange(tokens_BS1.shape[0])
        return self._run(tokens_BS1, samples_B, n_micro, "eval", 0, train=False)
