"""The training loop: gradient accumulation, grad sync, clipping, NaN guard, schedule, eval, checkpoints.

    trainer = Trainer(cfg, ps, model, data, run_dir)     # model built + initialised/loaded, on ps.device
    trainer.maybe_resume()                                # RUN_DIR/checkpoints/latest, if any
    history = trainer.train()                             # runs until cfg.train.train_steps

One optimizer step (`train_step`) is five named steps:
  1. balance     with moe.balance_scope=global only: the step's micro-batches once without gradients, so every
                 MoE layer knows the global batch's balance-loss gradient (model/moe/balance.py);
  2. accumulate  this rank's share of the global batch (data.next_step()) in micro-batches of micro_batch_size;
                 each micro-batch loss is divided by the number of micro-batches (the MoE aux/z losses are told
                 the same scale), and the MoE layers get the noise context of its global sample positions;
  3. reduce      gradients synchronised (training/grads.py; under FSDP2 the data-parallel part already happened
                 in backward, micro-batch by micro-batch) and the global norm taken; loss and per-domain losses
                 averaged over data-parallel ranks;
  4. update      a non-finite loss or norm skips the step (logged, counted; `max_bad_steps` consecutive ones
                 abort with TrainingError); otherwise clip, set the scheduled learning rate, AdamW, and the
                 once-per-step MoE updates (sigmoid expert bias);
  5. record      the metrics record of the step.
With pipeline parallelism (parallel.pp > 1) steps 1 and 2 run the micro-batches through the stages with the 1F1B
schedule (training/pipeline.py); losses live on the last stage and the MoE statistics on each stage's layers, so
step 3 also sums the loss over the pipeline group and step 5 merges every stage's MoE statistics.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..config import Config
from ..errors import CheckpointError, UserError
from ..parallel import ParallelState, all_gather_object, all_reduce_
from ..parallel.fsdp import is_fsdp
from . import checkpointing as ckpt
from .grads import clip_grads, global_grad_norm, sync_grads, zero_missing_grads
from .metrics import MetricsWriter, memory_stats, peak_tflops, train_flops_per_token
from .moe_hooks import (MoEStats, end_step, finish_balance_collect, merge_summaries, moe_layers, set_loss_scale,
                        set_noise_context, start_balance_collect)
from .optimizer import TrainOptimizer
from .schedule import lr_at
from .validation import perplexities, validate

log = logging.getLogger(__name__)


class TrainingError(UserError):
    """Training cannot continue (e.g. too many consecutive non-finite steps)."""


def uses_bf16(cfg: Config, device: torch.device) -> bool:
    """train.precision: bf16, or auto on CUDA."""
    prec = cfg.train.precision
    return prec == "bf16" or (prec == "auto" and device.type == "cuda")


def autocast_for(cfg: Config, device: torch.device, sharded: bool = False):
    """Context factory: bf16 autocast over the fp32 parameters (sharding none / zero1) when bf16 is on, else fp32.
    Under FSDP2 (`sharded`) the compute weights themselves are bf16 (parallel/fsdp.py), so no autocast."""
    if uses_bf16(cfg, device) and not sharded:
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class Trainer:
    def __init__(self, cfg: Config, ps: ParallelState, model: nn.Module, data, run_dir: Optional[str | Path] = None,
                 metrics: Optional[MetricsWriter] = None):
        self.cfg, self.ps, self.model, self.data = cfg, ps, model, data
        self.run_dir = Path(run_dir or cfg.logging.run_dir)
        self.sharded = is_fsdp(model)  # train.sharding zero2 / fsdp: parameters are FSDP2 DTensors
        # the compute device (with FSDP2 offload the parameters themselves stay in host memory)
        self.device = ps.device if self.sharded else next(model.parameters()).device
        self.optimizer = TrainOptimizer(model, cfg.train, ps, sharded=self.sharded)
        self.metrics = metrics or MetricsWriter(self.run_dir, cfg, enabled=ps.is_main)
        self.autocast = autocast_for(cfg, self.device, self.sharded)
        self.moe = moe_layers(model)
        self.moe_stats = MoEStats(self.moe)
        self.pipeline = None
        if ps.pp_size > 1:
            from .pipeline import PipelineRunner

            # the residual stream's dtype: fp32 under autocast, bf16 with FSDP2's bf16 compute weights
            boundary = torch.bfloat16 if uses_bf16(cfg, self.device) and self.sharded else torch.float32
            self.pipeline = PipelineRunner(cfg, ps, model, self.autocast, boundary, on_forward=self.moe_stats.collect)
        self.step = 0
        self.consumed_tokens = 0
        self.skipped_steps = 0
        self.bad_in_a_row = 0
        self.last_valid: dict[str, float] = {}
        self.flops_per_token = train_flops_per_token(cfg)
        self.peak = peak_tflops(cfg, self.device)
        self.stop = None          # a signals.StopRequest while running under run_training
        self.stopped_by = ""      # the signal that stopped train() early, if any
        self.last_saved: Optional[Path] = None
        self.last_saved_step = 0  # a fresh run has nothing to save at step 0

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"step": self.step, "consumed_tokens": self.consumed_tokens, "skipped_steps": self.skipped_steps,
                "schedule": {"lr": lr_at(self.step, self.cfg.train), "kind": self.cfg.train.lr_schedule,
                             "warmup_steps": self.cfg.train.warmup_steps, "train_steps": self.cfg.train.train_steps,
                             "min_lr_ratio": self.cfg.train.min_lr_ratio},
                "data": self.data.state_dict(), "domain_weights": dict(self.data.weights),
                "last_valid_loss": self.last_valid}

    def save(self) -> Path:
        opt = self.optimizer if self.cfg.checkpoint.save_optimizer else None
        self.last_saved = ckpt.save_checkpoint(self.run_dir, self.cfg, self.model, opt, self.state_dict(), self.ps,
                                               self.cfg.checkpoint.keep_last)
        self.last_saved_step = self.step
        return self.last_saved

    def resume(self, path: str | Path) -> None:
        state = ckpt.load_checkpoint(path, self.model, self.optimizer, self.ps)
        try:
            self.step, self.consumed_tokens = int(state["step"]), int(state["consumed_tokens"])
            self.skipped_steps = int(state.get("skipped_steps", 0))
            self.last_valid = {str(k): float(v) for k, v in (state.get("last_valid_loss") or {}).items()}
            self.data.load_state_dict(state["data"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{path}: unusable trainer_state.json ({type(err).__name__}: {err})") from None
        if not state.get("rng_restored"):
            from ..parallel import seed_all

            seed_all(self.cfg.train.seed, offset=1 + self.step * 7919)  # identical on every rank
            log.info("RNG states not restored (saved with world size %s, now %d); reseeded",
                     state.get("world_size"), self.ps.world_size)

    def maybe_resume(self) -> bool:
        """Resume from RUN_DIR/checkpoints/latest when it exists; returns whether it did."""
        latest = ckpt.latest_checkpoint(self.run_dir)
        if latest is None:
            return False
        self.resume(latest)
        self.last_saved, self.last_saved_step = latest, self.step
        return True

    # ------------------------------------------------------------------------------------------ step
    def train_step(self) -> dict:
        """One optimizer step (the five steps of the module docstring); returns its metrics record."""
        t0 = time.perf_counter()
        self.model.train()
        batch = self.data.next_step()
        if self.moe and self.cfg.moe.balance_scope == "global":
            self.collect_balance(batch)
        loss_sum, dom_sums, n_micro = self.accumulate(batch)
        loss, dom_sums, grad_norm = self.reduce(loss_sum, dom_sums, n_micro)
        lr = lr_at(self.step, self.cfg.train)
        finite = self.update(loss, grad_norm, lr)
        self.step += 1
        self.consumed_tokens += self.cfg.train.global_batch_size * self.cfg.data.seq_len
        return self.record(loss, grad_norm, lr, finite, dom_sums, time.perf_counter() - t0)

    def micro_batches(self, batch):
        """(tokens [B, S+1], domain ids [B]) of each micro-batch, with the MoE layers' noise context set."""
        micro = self.cfg.train.micro_batch_size
        for m, (tokens_BS1, dom_B) in enumerate(batch.micro_batches(micro)):
            set_noise_context(self.moe, self.cfg.train.seed, batch.step, batch.first_sample + m * micro)
            yield tokens_BS1.to(self.device), dom_B

    @torch.no_grad()
    def collect_balance(self, batch) -> None:
        """Step 1: forward every micro-batch without gradients; each MoE layer sums its global routing statistics."""
        start_balance_collect(self.moe)
        if self.pipeline is not None:
            self.pipeline.forward_only(batch, batch.tokens.shape[0] // self.cfg.train.micro_batch_size)
        else:
            for tokens_BS1, _ in self.micro_batches(batch):
                with self.autocast():
                    self.model.loss(tokens_BS1[:, :-1], tokens_BS1[:, 1:])
        finish_balance_collect(self.moe)

    def accumulate(self, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Step 2: forward + backward of every micro-batch; returns (loss sum, per-domain [sums; counts], n)
        (zeros on pipeline stages other than the last)."""
        n_micro = batch.tokens.shape[0] // self.cfg.train.micro_batch_size
        set_loss_scale(self.moe, 1.0 / n_micro)
        self.moe_stats.reset()
        dom_sums = torch.zeros(2, len(self.data.domain_names), dtype=torch.float64)
        loss_sum = torch.zeros((), dtype=torch.float64)
        if self.pipeline is not None:
            per_seq = self.pipeline.forward_backward(batch, n_micro)
            if per_seq is not None:
                loss_sum += sum(loss.double().cpu() for loss in self.pipeline.micro_losses)
                per = per_seq.double().cpu()
                dom_sums[0].index_add_(0, batch.domain_ids, per)
                dom_sums[1].index_add_(0, batch.domain_ids, torch.ones_like(per))
            return loss_sum, dom_sums, n_micro
        for tokens_BS1, dom_B in self.micro_batches(batch):
            with self.autocast():
                loss, per_seq_B = self.model.loss(tokens_BS1[:, :-1], tokens_BS1[:, 1:])
            (loss / n_micro).backward()
            self.moe_stats.collect()
            loss_sum += loss.detach().double().cpu()
            per = per_seq_B.detach().double().cpu()
            dom_sums[0].index_add_(0, dom_B, per)
            dom_sums[1].index_add_(0, dom_B, torch.ones_like(per))
        return loss_sum, dom_sums, n_micro

    def reduce(self, loss_sum, dom_sums, n_micro) -> tuple[float, torch.Tensor, float]:
        """Step 3: synchronised gradients, their global norm (over all pipeline stages), and the DP-mean loss and
        per-domain sums (from the last pipeline stage)."""
        ps = self.ps
        zero_missing_grads(self.model.parameters())
        sync_grads(self.model, ps, self.sharded)
        grad_norm = global_grad_norm(self.model, ps, self.sharded)
        stats = torch.cat([loss_sum.reshape(1) / n_micro, dom_sums.flatten()])
        for size, group in ((ps.dp_size, ps.dp_group), (ps.pp_size, ps.pp_group)):
            if size > 1:
                stats = all_reduce_(stats.to(self.device), group).cpu()
        return float(stats[0]) / ps.dp_size, stats[1:].view(2, -1), grad_norm

    def update(self, loss: float, grad_norm: float, lr: float) -> bool:
        """Step 4: NaN guard, clipping, AdamW and the per-step MoE updates; returns whether the step was taken."""
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            clip_grads(self.model, self.cfg.train.clip_grad, grad_norm)
            self.optimizer.set_lr(lr)
            self.optimizer.step()
            self.bad_in_a_row = 0
        else:
            self.skipped_steps += 1
            self.bad_in_a_row += 1
            log.warning("step %d: non-finite loss %s or grad norm %s; step skipped (%d in a row, limit %d)",
                        self.step + 1, loss, grad_norm, self.bad_in_a_row, self.cfg.train.max_bad_steps)
        end_step(self.moe, finite)
        self.optimizer.zero_grad()
        return finite

    def record(self, loss, grad_norm, lr, finite, dom_sums, seconds) -> dict:
        """Step 5: the step's metrics record (raises TrainingError after max_bad_steps skipped steps in a row)."""
        cfg, ps = self.cfg, self.ps
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        tokens = cfg.train.global_batch_size * cfg.data.seq_len
        rec = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_sec": tokens / seconds,
               "step_time_s": seconds, "consumed_tokens": self.consumed_tokens, "skipped": not finite,
               "skipped_steps": self.skipped_steps,
               "domain_loss": {n: float(dom_sums[0, i] / dom_sums[1, i])
                               for i, n in enumerate(self.data.domain_names) if dom_sums[1, i] > 0},
               "domain_weights": dict(self.data.weights)}
        summary = self.moe_stats.summary()
        if ps.pp_size > 1:  # every stage's layers (collective over the pipeline group)
            summary = merge_summaries(all_gather_object(summary, ps.pp_group))
        rec.update(summary or {"aux_loss": 0.0})
        if self.peak:
            rec["mfu"] = rec["tokens_per_sec"] * self.flops_per_token / (ps.world_size * self.peak * 1e12)
        rec.update(memory_stats(self.device))
        if self.bad_in_a_row >= cfg.train.max_bad_steps:
            self.metrics.log(rec)
            raise TrainingError(f"{self.bad_in_a_row} consecutive steps with a non-finite loss or gradient norm "
                                f"(train.max_bad_steps={cfg.train.max_bad_steps}); last loss {loss}, "
                                f"grad norm {grad_norm} at step {self.step}")
        return rec

    # ------------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict:
        """Per-domain validation loss/perplexity; updates dynamic domain weights; logs an eval record."""
        cfg = self.cfg
        batch = cfg.train.micro_batch_size * self.ps.dp_size
        losses = validate(self.model, self.data, self.ps, batch, cfg.train.eval_iters, self.autocast, self.device,
                          pipeline=self.pipeline)
        self.last_valid = losses
        weights = self.data.update_weights(losses)
        rec = {"step": self.step, "valid_loss": losses, "valid_ppl": perplexities(losses),
               "domain_weights": dict(weights)}
        self.metrics.log(rec)
        return rec

    # ------------------------------------------------------------------------------------------- loop
    def train(self, until: Optional[int] = None) -> list[dict]:
        """Run steps until `until` (default train.train_steps); evaluate/save on their intervals and at the end.
        Returns the step records of this call."""
        cfg = self.cfg
        until = cfg.train.train_steps if until is None else until
        history = []
        while self.step < until:
            if self.stop_requested():
                self.stop_and_save()
                return history
            rec = self.train_step()
            history.append(rec)
            if self.step % max(1, cfg.train.log_interval) == 0 or rec["skipped"]:
                self.metrics.log(rec)
            if cfg.train.eval_interval and self.step % cfg.train.eval_interval == 0:
                self.evaluate()
            saved = bool(cfg.checkpoint.save_interval) and self.step % cfg.checkpoint.save_interval == 0
            if saved:
                self.save()
            if cfg.train.exit_interval and self.step % cfg.train.exit_interval == 0 and self.step < until:
                if not saved:
                    self.save()
                log.info("exit_interval=%d reached at step %d: checkpoint saved, exiting (rerun to resume)",
                         cfg.train.exit_interval, self.step)
                return history
        if history and self.step == cfg.train.train_steps:
            if cfg.train.eval_interval and self.step % cfg.train.eval_interval:
                self.evaluate()
            if not cfg.checkpoint.save_interval or self.step % cfg.checkpoint.save_interval:
                self.save()
        return history

    def stop_requested(self) -> bool:
        """Whether any rank got a stop signal (one max-all-reduce over every rank; all ranks agree)."""
        from ..parallel import world_group

        local = 1.0 if self.stop is not None and self.stop.requested else 0.0
        if self.ps.world_size == 1:
            return bool(local)
        flag = all_reduce_(torch.tensor([local], device=self.device), world_group(), op="max")
        return bool(flag.item())

    def stop_and_save(self) -> None:
        """The graceful stop: save unless the current step is already saved; record who asked."""
        self.stopped_by = self.stop.name if self.stop is not None and self.stop.requested else "a stop signal"
        if self.step != self.last_saved_step:
            self.save()
        log.warning("stopped by %s at step %d: checkpoint %s; run the same command again to resume",
                    self.stopped_by, self.step, self.last_saved)

    def close(self) -> None:
        self.metrics.close()
