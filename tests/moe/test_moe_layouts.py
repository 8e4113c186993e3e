"""Every parallel layout computes the same MoE function: outputs and gradients of every parameter and of the input
match one process to 1e-5 (fp32, train mode with router noise), for every router and k in {1, 2, 4}."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _dist import spawn  # noqa: E402
from moe_cases import cases, layout_worker, local_part, reference  # noqa: E402

from megatron_moe.model.sharding import Split, local_slice  # noqa: E402

TOL = 1e-5


def _check(results):
    refs = {c[0]: reference(c) for c in cases()}
    checked = 0
    for rank_results in results:
        for res in rank_results:
            ref, where = refs[res["case"]], f"{res['layout']} {res['case']}"
            ps = SimpleNamespace(dp_size=res["ps"]["dp"], dp_rank=res["ps"]["dp_rank"], tp_size=res["ps"]["tp"],
                                 tp_rank=res["ps"]["tp_rank"], sp=res["ps"]["sp"])
            want_y = local_part(ref["y"], ps)
            assert res["y"].shape == want_y.shape, where
            assert (res["y"] - want_y).abs().max().item() <= TOL, where
            assert (res["dx"] - local_part(ref["dx"], ps)).abs().max().item() <= TOL, where
            assert torch.equal(res["tokens"], ref["tokens"]), where
            assert abs(res["aux"].item() - ref["aux"].item()) <= TOL, where
            assert abs(res["z"].item() - ref["z"].item()) <= TOL, where
            for name, g in res["grads"].items():
                want = local_slice(ref["grads"][name], [Split(*s) for s in res["splits"][name]])
                assert g.shape == want.shape, (where, name)
                assert (g - want).abs().max().item() <= TOL, (where, name, (g - want).abs().max().item())
            checked += 1
    return refs, checked


@pytest.mark.dist
def test_moe_two_process_layouts_match_one_process():
    layouts = [dict(ep=2), dict(tp=2, etp=2), dict(tp=2, sp=True), dict(tp=2, sp=True, etp=2)]
    results = spawn(layout_worker, 2, layouts, cases())
    refs, checked = _check(results)
    assert checked == 2 * len(layouts) * len(cases())
    # the sharded expert weights really are sharded, and experts with zero tokens occurred
    ep_res = next(r for r in results[0] if r["layout"] == dict(ep=2))
    assert ep_res["grads"]["experts.w1"].shape[0] == 4
    assert (refs["switch-zero-tokens"]["tokens"] == 0).any()
    assert refs["softmax-k2"]["z"].item() > 0  # the z-loss is on in those cases, so its comparison means something


@pytest.mark.dist
def test_moe_ep2_x_tp2_four_processes_match_one_process():
    layouts = [dict(tp=2, ep=2, etp=2, sp=True), dict(tp=2, ep=2)]
    results = spawn(layout_worker, 4, layouts, cases())
    _, checked = _check(results)
    assert checked == 4 * len(layouts) * len(cases())
