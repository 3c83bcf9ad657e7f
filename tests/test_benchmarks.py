"""The benchmark scripts run (on the CPU, at the smallest settings) and write the JSON their README rows come
from. They measure; nothing here asserts a speed."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench_path(monkeypatch):
    """The benchmarks folder importable; torch's thread count put back afterwards (the scripts set it, and
    later tests compare in-process results bit for bit with one-thread subprocesses)."""
    import torch

    monkeypatch.syspath_prepend(str(BENCH))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_gpu_benchmark_runs_on_the_cpu(bench_path, tmp_path):
    import bench_gpu

    out = bench_gpu.main(["--device", "cpu", "--models", "tiny", "--runs", "2", "--steps", "1",
                          "--store-dtype", "float16", "--json", str(tmp_path / "gpu.json")])
    r = json.loads((tmp_path / "gpu.json").read_text())["models"][0]
    assert out["models"][0] == r and len(r["plain_s"]) == len(r["traced_s"]) == len(r["traced_unfused_s"]) == 2
    assert r["ratio_pairs_min"] <= r["ratio_median"] <= r["ratio_pairs_max"] and r["store_dtype"] == "float16"
    assert r["ratio_unfused_pairs_min"] <= r["ratio_unfused_median"] <= r["ratio_unfused_pairs_max"]


def test_transformer_benchmark_kernel_section_runs(bench_path, tmp_path, monkeypatch):
    import bench_dit

    monkeypatch.setattr(sys, "argv", ["bench_dit.py"])
    k = bench_dit.bench_kernel(n_img=16, n_txt=20, heads=2, dim=8, kept=5, blocks=2, repeats=2)
    assert k["shape"] == [2, 2, 36, 8] and k["plain_ms"] > 0 and k["traced_ms"] > 0
    bench_dit.main(["--model", "tiny-flux", "--size", "64", "--runs", "1", "--sections", "generation", "--threads", "1",
                    "--json", str(tmp_path / "dit.json")])
    g = json.loads((tmp_path / "dit.json").read_text())["generation"]
    assert g["model"] == "tiny-flux" and g["stored_MB"] > 0
    bench_dit.main(["--model", "tiny-sd3", "--size", "64", "--runs", "1", "--sections", "calls", "--threads", "1",
                    "--json", str(tmp_path / "dit.json")])
    c = json.loads((tmp_path / "dit.json").read_text())["calls"]
    assert c["calls_per_generation"] > 0 and c["per_call"]["traced_ms"] > 0  # the traced calls were timed in situ
    assert len(c["per_generation"]["calls_added_paired_ms"]) == 1


def test_floor_section_measures_the_models_own_calls(bench_path, tmp_path):
    import bench_trace

    bench_trace.main(["--models", "tiny", "--sections", "floor", "--repeats", "2", "--steps", "1",
                      "--json", str(tmp_path / "trace.json")])
    fl = json.loads((tmp_path / "trace.json").read_text())["floor"][0]
    # one step's captured calls, every cross-attention layer of the tiny UNet once
    assert fl["calls"] == sum(r["calls_per_step"] for r in fl["shapes"]) == 7
    assert fl["floor_ms"] == pytest.approx(fl["head_sum_ms"] + fl["upsample_ms"])
    assert fl["explicit_floor_ms"] == pytest.approx(fl["floor_ms"] + fl["explicit_minus_fused_ms"])
    assert fl["lse_floor_ms"] == pytest.approx(fl["floor_ms"] + fl["lse_probs_ms"])
    for kind in ("fused", "explicit"):
        assert fl[f"{kind}_added_ms"] == pytest.approx(fl[f"{kind}_recording_ms"] + fl["word_maps_ms"])
        assert fl[f"{kind}_multiple_of_floor"] == pytest.approx(fl[f"{kind}_added_ms"] / fl["floor_ms"])


@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sd3", "tiny-pixart", "tiny-zimage"])  # OVAM; ConceptAttention
def test_attribute_benchmark_runs(bench_path, tmp_path, model):
    import bench_attribute

    r = bench_attribute.main(["--model", model, "--repeats", "1", "--json", str(tmp_path / "a.json")])
    assert r == json.loads((tmp_path / "a.json").read_text())
    assert set(r["ms_per_call"]) == {"denoiser", "attribute", "concepts"} and r["maps_kB_per_timestep"]["concepts"] > 0
    assert r["concept_transient_kB_per_layer"] > 0
