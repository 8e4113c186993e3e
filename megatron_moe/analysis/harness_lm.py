"""Our model behind lm-evaluation-harness's `LM` interface, so any checkpoint of ours (any TP/EP layout it was saved
in) runs the harness's tasks in-process, without an export.

    lm = MegatronMoeLM.from_checkpoint("runs/x", batch_size=8, device="cpu", dtype=torch.float32)
    lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"], ...)

It computes what the harness's HF backend (`--model hf`, lm_eval/models/huggingface.py) computes on an export of
the same checkpoint, step for step, so the two give the same numbers (tests/evaluate/test_evaluate_tasks.py):
  tokenizer      transformers' AutoTokenizer over the tokenizer files an export would carry
                 (export/tokenizer_files.py, built in a temporary directory), called as the HF backend calls it:
                 BOS as the tokenizer adds it by default, none when the text already starts with the BOS string
  loglikelihood  (context + continuation)[-(max_length + 1):][:-1] right-padded into batches sorted by length,
                 log-softmax in fp32, the continuation's summed log-probability and whether it is the greedy one
  rolling        the harness's disjoint rolling windows of max_length tokens after the prefix (BOS) token
  generate_until greedy decoding (sampling is refused), the context left-truncated to max_length - max_gen_toks,
                 stopped at EOS, at a stop string or after max_gen_toks, decoded without special tokens and cut
                 at the first stop string
max_length is the model's max_seq_len (what the export's config gives the HF backend). MoE layers evaluate
dropless, as the HF model does: a checkpoint trained with `moe.capacity_factor` has it switched off here (a batch's
padding must not change which tokens an expert drops).

Shapes: B batch, S sequence, V vocabulary.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ..errors import UserError

log = logging.getLogger(__name__)


def hf_tokenizer_for(ckpt: Path, model_cfg, tokenizer: Optional[str | Path] = None):
    """transformers tokenizer from the tokenizer files an export of `ckpt` would carry (or of `tokenizer`: a
    sentencepiece .model, a tokenizer.json, or a directory holding tokenizer files)."""
    import shutil

    from transformers import AutoTokenizer

    from ..checkpoint.format import TOKENIZER_FILES
    from ..export.tokenizer_files import tokenizer_files

    with tempfile.TemporaryDirectory(prefix="megatron-moe-tok-") as tmp:
        src = Path(ckpt)
        if tokenizer is not None:
            t = Path(tokenizer)
            if not t.exists():
                raise UserError(f"--tokenizer {t} does not exist")
            src = Path(tmp) / "src"
            src.mkdir()
            if t.is_dir():
                for name in TOKENIZER_FILES:
                    if (t / name).is_file():
                        shutil.copy2(t / name, src / name)
            else:
                shutil.copy2(t, src / ("tokenizer.json" if t.suffix == ".json" else "tokenizer.model"))
        files = tokenizer_files(src, model_cfg)
        if not {"tokenizer.model", "tokenizer.json"} & set(files.carried):
            raise UserError(f"{ckpt} carries no tokenizer (tokenizer.model or tokenizer.json); pass --tokenizer")
        out = Path(tmp) / "tok"
        out.mkdir()
        files.write(out)
        return AutoTokenizer.from_pretrained(str(out))


def dropless(model: torch.nn.Module) -> Optional[float]:
    """Switch off the MoE capacity limit of every MoE layer; returns the capacity factor that was set."""
    had = None
    for m in model.modules():
        cfg = getattr(m, "cfg", None)
        if cfg is not None and getattr(cfg, "capacity_factor", None) is not None:
            had = cfg.capacity_factor
            cfg.capacity_factor = None
    return had


class MegatronMoeLM(TemplateLM):
    """lm-evaluation-harness LM over one of our models (see the module docstring)."""

    backend = "causal"

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int, batch_size: int = 8,
                 max_gen_toks: int = 256, progress: bool = True):
        super().__init__()
        self.model, self.tokenizer = model.eval(), tokenizer
        self._max_length, self._batch_size, self._max_gen_toks = max_length, batch_size, max_gen_toks
        self.progress = progress
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token

    @classmethod
    def from_checkpoint(cls, path: str | Path, batch_size: int = 8, device: str = "cpu",
                        dtype: torch.dtype = torch.float32, max_length: Optional[int] = None,
                        tokenizer: Optional[str | Path] = None, progress: bool = True) -> "MegatronMoeLM":
        from ..api import load_model
        from ..checkpoint import read_config, resolve

        ckpt = resolve(path)
        model_cfg, _, _ = read_config(ckpt)
        tok = hf_tokenizer_for(ckpt, model_cfg, tokenizer)
        model = load_model(ckpt, device=device, dtype=dtype)
        cf = dropless(model)
        if cf is not None:
            log.info("evaluating dropless (the checkpoint's moe.capacity_factor=%s is switched off)", cf)
        if max_length is not None and max_length > model_cfg.max_seq_len:
            raise UserError(f"--seq-len={max_length} exceeds the model's max_seq_len={model_cfg.max_seq_len}")
        return cls(model, tok, max_length or model_cfg.max_seq_len, batch_size, progress=progress)

    # ------------------------------------------------------------------------------- harness properties
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, left_truncate_len=None,
                   **kwargs) -> list[int]:
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        bos = self.tokenizer.decode(self.prefix_token_id)
        if add_special_tokens is None and bos and string.startswith(bos):
            kw = {"add_special_tokens": False}
        ids = self.tokenizer.encode(string, **kw)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _logprobs(self, rows: list[list[int]]) -> torch.Tensor:
        """log-softmax [B, S, V] (fp32) of right-padded `rows`."""
        S = max(len(r) for r in rows)
        ids_BS = torch.zeros(len(rows), S, dtype=torch.long)
        for i, r in enumerate(rows):
            ids_BS[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        logits_BSV = self.model(ids_BS.to(self.device))
        return F.log_softmax(logits_BSV, dim=-1, dtype=torch.float32)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        def sort_key(req):
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)

        order = Collator(requests, sort_fn=sort_key, group_by="contexts",
                         group_fn=lambda req: req[-2] + req[-1][:-1])
        res = []
        bar = tqdm(total=len(requests), disable=disable_tqdm or not self.progress, desc="loglikelihood")
        for chunk in order.get_batched(n=self.batch_size):
            rows = []
            for _, ctx, cont in chunk:
                if not ctx or not cont or len(cont) > self.max_length:
                    raise UserError(f"a request has {len(ctx)} context and {len(cont)} continuation tokens; "
                                    f"the continuation must be 1..{self.max_length} tokens")
                rows.append((ctx + cont)[-(self.max_length + 1):][:-1])
            logp_BSV = self._logprobs(rows)
            for (req_str, ctx, cont), row, logp_SV in zip(chunk, rows, logp_BSV):
                logp_1CV = logp_SV[len(row) - len(cont):len(row)].unsqueeze(0)
                greedy_1C = logp_1CV.argmax(-1)
                for req_str_, cont_, logp_ in order.get_cache(req_str=req_str, cxt_toks=ctx, cont_toks=cont,
                                                              logits=logp_1CV):
                    cont_1C = torch.tensor(cont_, dtype=torch.long, device=logp_.device).unsqueeze(0)
                    is_greedy = bool((greedy_1C[:, -cont_1C.shape[1]:] == cont_1C).all())
                    score = float(torch.gather(logp_, 2, cont_1C.unsqueeze(-1)).sum())
                    res.append((score, is_greedy))
                    if req_str_ is not None:
                        self.cache_hook.add_partial("loglikelihood", req_str_, (score, is_greedy))
                    bar.update(1)
        bar.close()
        return order.get_original(res)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, counts = [], []
        for (string,) in [req.args for req in requests]:
            w = [(None,) + make_disjoint_window(x) for x in get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)]
            windows += w
            counts.append(len(w))
        scores = []
        for i in range(0, len(windows), self.batch_size):
            scores += [s for s, _ in self._loglikelihood_tokens(windows[i:i + self.batch_size], disable_tqdm=True)]
        out, pos = [], 0
        for req, n in zip(requests, counts):
            out.append(sum(scores[pos:pos + n]))
            pos += n
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, out[-1])
        return out

    # --------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def _greedy(self, ctx: list[int], max_new: int, until: list[str]) -> list[int]:
        """Greedy continuation of `ctx` (no KV cache: each step runs the whole sequence)."""
        ids, new = list(ctx), []
        eos = self.tokenizer.eos_token_id
        stops = [s for s in until if s]
        for _ in range(max_new):
            logits_V = self.model(torch.tensor([ids], dtype=torch.long, device=self.device))[0, -1]
            tok = int(logits_V.float().argmax())
            new.append(tok)
            ids.append(tok)
            if tok == eos:
                break
            if stops and any(s in self.tok_decode(new) for s in stops):
                break
        return new

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        args = [req.args for req in requests]
        order = Collator(args, sort_fn=lambda a: (-len(self.tok_encode(a[0])), a[0]), group_by="gen_kwargs",
                         group_fn=lambda a: a[1])
        eos = self.tokenizer.decode(self.eot_token_id)
        res = []
        bar = tqdm(total=len(args), disable=disable_tqdm or not self.progress, desc="generate_until")
        for chunk in order.get_batched(n=self.batch_size):
            for context, gen_kwargs in chunk:
                kw = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
                if kw.get("do_sample") or kw.get("temperature", 0.0) > 0:
                    raise UserError("the in-process backend decodes greedily; a task that samples (do_sample or "
                                    "temperature > 0) needs an export and the HF backend")
                until = handle_stop_sequences(kw.pop("until", None), eos=eos)
                max_new = kw.pop("max_gen_toks")
                max_ctx = self.max_length - max_new
                if max_ctx <= 0:
                    raise UserError(f"max_gen_toks={max_new} must be below the model's length {self.max_length}")
                ctx = self.tok_encode(context, left_truncate_len=max_ctx)
                text = self.tok_decode(self._greedy(ctx, max_new, until))
                res.append(postprocess_generated_text(generation=text, stop=until, think_end_token=None))
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), res[-1])
                bar.update(1)
        bar.close()
        return order.get_original(res)
