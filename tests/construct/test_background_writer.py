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


def _spy_flushes(monkeypatch):
    """Record (event, path) for every part write started and every file flushed / dropped, calling the real ones."""
    import os
    import time

    events = []
    real_save, real_sync, real_advise = store.dcp_save, os.fdatasync, os.posix_fadvise

    def save(tensors, path, *args):
        events.append(("write", path.name))
        return real_save(tensors, path, *args)

    def sync(fd):  # slow, as a disk is: a writer that did not wait for the flusher would overtake it
        time.sleep(0.02)
        events.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_sync(fd)

    def advise(fd, offset, length, advice):
        if advice == os.POSIX_FADV_DONTNEED:
            events.append(("drop", os.readlink(f"/proc/self/fd/{fd}")))
        return real_advise(fd, offset, length, advice)

    monkeypatch.setattr(store, "dcp_save", save)
    monkeypatch.setattr(os, "fdatasync", sync)
    monkeypatch.setattr(os, "posix_fadvise", advise)
    return events


@pytest.mark.skipif(not hasattr(__import__("os"), "posix_fadvise"), reason="no posix_fadvise on this OS")
@pytest.mark.parametrize("background", [True, False])
def test_parts_are_flushed_and_dropped_while_the_next_is_written(tmp_path, monkeypatch, background):
    """Write-behind: every file of every part is flushed (fdatasync) and dropped from the page cache before the
    commit, and part k is not started before part k-2's files are flushed (at most one part written and one
    flushed at a time: the page cache holds about two parts whatever the checkpoint's size)."""
    events = _spy_flushes(monkeypatch)
    parts = _parts(5)
    with CheckpointWriter(tmp_path / "ck", {"model": {}}, background=background) as w:
        for name, tensors in parts.items():
            w.add_part(name, tensors)
    model = tmp_path / "ck" / "model"
    files = {p: sorted(f.name for f in (model / p).iterdir()) for p in parts}
    assert all(len(fs) >= 2 for fs in files.values())  # the data file(s) and .metadata
    def part_of(path):  # the temporary directory was renamed: match on part/file
        part, name = path.split("/")[-2:]
        return part, name
    synced = [part_of(p) for e, p in events if e == "sync"]
    dropped = [part_of(p) for e, p in events if e == "drop"]
    want = sorted((p, f) for p, fs in files.items() for f in fs)
    assert sorted(synced) == want and sorted(dropped) == want
    order = list(parts)
    for i, e in enumerate(events):
        if e[0] == "write" and order.index(e[1]) >= 2:
            done = {part_of(p) for ev, p in events[:i] if ev == "sync"}
            earlier = {(p, f) for p in order[:order.index(e[1]) - 1] for f in files[p]}
            assert earlier <= done, f"{e[1]} started before {sorted(earlier - done)[:1]} was flushed"
    got = read_tensors(tmp_path / "ck")
    assert all(torch.equal(got[k], v) for tensors in parts.values() for k, v in tensors.items())


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("fail_at", [1, 4])  # a middle part, and the last (found when the writer finishes)
def test_disk_full_found_by_the_flush_leaves_nothing(tmp_path, monkeypatch, background, fail_at):
    import errno
    import os

    real, seen = os.fdatasync, set()

    def full(fd):  # delayed allocation: the full disk shows at write-back, not at write()
        part = os.readlink(f"/proc/self/fd/{fd}").split("/")[-2]
        seen.add(part)
        if len(seen) == fail_at + 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fdatasync", full)
    with pytest.raises(OutputError, match=r"cannot write .*/ck: No space left on device"):
        with CheckpointWriter(tmp_path / "ck", {"model": {}}, background=background) as w:
            for name, tensors in _parts(5).items():
                w.add_part(name, tensors)
    assert list(tmp_path.iterdir()) == []
