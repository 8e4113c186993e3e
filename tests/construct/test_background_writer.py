"""CheckpointWriter(background=True): parts written by a thread read back unchanged; a failing write surfaces as
the caller's error and leaves no directory behind; build_expert_weights equals plain indexing."""
import pytest
import torch

from megatron_moe.atomic import OutputError
from megatron_moe.checkpoint import store
from megatron_moe.checkpoint.store import CheckpointWriter, read_tensors
from megatron_moe.construct.partition import build_expert_weights, random_partition


def _parts(n=4):
    g = torch.Generator().manual_seed(0)
    return {f"layer_{i:03d}": {f"layers.{i}.w": torch.randn(16, 8, generator=g).to(torch.bfloat16),
                               f"layers.{i}.b": torch.randn(8, generator=g)} for i in range(n)}


def test_background_parts_read_back(tmp_path):
    parts = _parts()
    with CheckpointWriter(tmp_path / "ck", {"model": {}}, background=True) as w:
        for name, tensors in parts.items():
            w.add_part(name, tensors)
    got = read_tensors(tmp_path / "ck")
    want = {k: v for tensors in parts.values() for k, v in tensors.items()}
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


@pytest.mark.parametrize("fail_at", [1, 3])  # a middle part (seen by the next add_part) and the last (at commit)
def test_failed_background_write_leaves_nothing(tmp_path, monkeypatch, fail_at):
    real, calls = store.dcp_save, []

    def flaky(tensors, path, *args):
        calls.append(path.name)
        if len(calls) == fail_at + 1:
            raise OSError(28, "No space left on device", str(path))
        return real(tensors, path, *args)

    monkeypatch.setattr(store, "dcp_save", flaky)
    with pytest.raises(OutputError, match=r"cannot write .*/ck: No space left on device"):  # one line, exit 2
        with CheckpointWriter(tmp_path / "ck", {"model": {}}, background=True) as w:
            for name, tensors in _parts().items():
                w.add_part(name, tensors)
    assert list(tmp_path.iterdir()) == []


def test_expert_weights_are_the_assigned_rows_and_columns():
    g = torch.Generator().manual_seed(1)
    F, D, E = 48, 8, 4
    w1, w3, w2 = torch.randn(F, D, generator=g), torch.randn(F, D, generator=g), torch.randn(D, F, generator=g)
    assign = random_partition(F, E, 3)
    e1, e3, e2 = build_expert_weights(w1, w3, w2, assign)
    assert e1.shape == (E, F // E, D) and e2.shape == (E, D, F // E) and e2.is_contiguous()
    for e in range(E):
        for j, f in enumerate(assign[e].tolist()):
            assert torch.equal(e1[e, j], w1[f]) and torch.equal(e3[e, j], w3[f]) and torch.equal(e2[e, :, j], w2[:, f])
