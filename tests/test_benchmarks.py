"""The benchmark scripts run (on the CPU, at the smallest settings) and write the JSON their README rows come
from. They measure; nothing here asserts a speed."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


def test_gpu_benchmark_runs_on_the_cpu(bench_path, tmp_path):
    import bench_gpu

    out = bench_gpu.main(["--device", "cpu", "--models", "tiny", "--runs", "2", "--steps", "1",
                          "--store-dtype", "float16", "--json", str(tmp_path / "gpu.json")])
    r = json.loads((tmp_path / "gpu.json").read_text())["models"][0]
    assert out["models"][0] == r and len(r["plain_s"]) == len(r["traced_s"]) == 2
    assert r["ratio_pairs_min"] <= r["ratio_median"] <= r["ratio_pairs_max"] and r["store_dtype"] == "float16"


def test_transformer_benchmark_kernel_section_runs(bench_path, tmp_path, monkeypatch):
    import bench_dit

    monkeypatch.setattr(sys, "argv", ["bench_dit.py"])
    k = bench_dit.bench_kernel(n_img=16, n_txt=20, heads=2, dim=8, kept=5, blocks=2, repeats=2)
    assert k["shape"] == [2, 2, 36, 8] and k["plain_ms"] > 0 and k["traced_ms"] > 0
    bench_dit.main(["--model", "tiny-flux", "--size", "64", "--runs", "1", "--sections", "generation",
                    "--json", str(tmp_path / "dit.json")])
    g = json.loads((tmp_path / "dit.json").read_text())["generation"]
    assert g["model"] == "tiny-flux" and g["stored_MB"] > 0
