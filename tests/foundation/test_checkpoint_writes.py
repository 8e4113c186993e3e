"""Checkpoint parts reach the OS in writes of at most 1 MiB, and their files are byte for byte what DCP's own
writer produces (checkpoint/write_stream.py)."""
import os
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from megatron_moe.checkpoint.store import dcp_load, dcp_save
from megatron_moe.checkpoint.write_stream import WRITE_PIECE


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"big": torch.randn(5 * WRITE_PIECE // 4 + 3, generator=g),  # 5 MiB and 12 bytes: not a multiple
            "bf16": torch.randn(3, 700, 512, generator=g).to(torch.bfloat16),
            "small": torch.arange(7)}


def _files(part):
    return {f: (part / f).read_bytes() for f in sorted(os.listdir(part))}


@pytest.mark.parametrize("sync_files,threads", [(False, 1), (True, 2)])
def test_part_is_written_in_pieces_and_matches_dcp(tmp_path, monkeypatch, sync_files, threads):
    tensors = _tensors()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(tmp_path / "dcp"), sync_files=sync_files,
                                                              thread_count=threads), no_dist=True)
    pieces, real_write = [], os.write

    def spy(fd, data):
        pieces.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    dcp_save(tensors, tmp_path / "ours", no_dist=True, sync_files=sync_files, threads=threads)
    monkeypatch.undo()

    ours, theirs = _files(tmp_path / "ours"), _files(tmp_path / "dcp")
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        if name != ".metadata":  # the metadata carries each save's own id
            assert ours[name] == theirs[name], name
    # every byte of every file went through the pieces, none larger than 1 MiB
    assert sum(pieces) == sum(len(b) for b in ours.values())
    assert max(pieces) == WRITE_PIECE and len(pieces) >= 6

    back = {k: torch.empty_like(v) for k, v in tensors.items()}
    dcp_load(back, tmp_path / "ours", no_dist=True)
    for k, v in tensors.items():
        assert torch.equal(back[k], v), k
