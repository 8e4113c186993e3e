"""The benchmark CLI runs, checks parity with MixtralSparseMoeBlock and reports a ratio."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))


def test_moe_benchmark_cli_tiny(tmp_path, capsys):
    import benchmark_moe_layer

    out = tmp_path / "bench.json"
    rc = benchmark_moe_layer.main(["--hidden", "16", "--ffn", "8", "--experts", "4", "--batch", "1", "--seq", "16",
                                   "--warmup", "0", "--iters", "1", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["max_abs_diff"] < 1e-5
    assert res["speedup"] > 0 and res["ours"]["tokens_per_s"] > 0
    assert res["max_possible_speedup"] == res["mixtral_hf"]["median_s"] / res["floor"]["median_s"]
    assert "speedup" in capsys.readouterr().out


def test_moe_benchmark_cli_bad_input(capsys):
    import benchmark_moe_layer

    assert benchmark_moe_layer.main(["--iters", "0"]) == 2
    assert capsys.readouterr().err.startswith("error:")
