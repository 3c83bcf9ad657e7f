"""README's and docs/'s lists and tables that have a source, generated from it: ``python -m daamlib.docs``.

A generated block sits between two markers in a Markdown file::

    <!-- generated: models (python -m daamlib.docs) -->
    ...
    <!-- end generated -->

``python -m daamlib.docs`` rewrites every block from its source; ``--check`` rewrites nothing and lists the blocks
that differ (``tests/test_docs.py`` runs it, so README and its sources cannot disagree). Sources:

models     the model registry (:func:`daamlib.models.registered`): every registered name
families   the traced transformer families (:func:`daamlib.dit.registry.families`): the family table
paper      every ``figures/NN_slug_paper_vs_here.csv`` (``make figures``): the paper-vs-here table
threads    ``benchmarks/results/bench_threads*.json`` (``python benchmarks/bench_threads.py``)
floor      ``benchmarks/results/bench_trace_cpu_floor_r*.json`` (three runs of the floor benchmark)
depth      notebook 01's Fig. 11 rows for each embedded model (``figures/``, ``figures/shapeworld-clip/``,
           ``figures/shapeworld-mmdit/``): which steps and layers carry the map
gpu        the published configurations in :data:`GPU_MODELS`: GPU memory of one traced generation, computed
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("README.md", "docs/*.md")
BLOCK = re.compile(r"(<!-- generated: (\w+) \(python -m daamlib\.docs\) -->\n)(.*?)(<!-- end generated -->)", re.S)


def models() -> str:
    from . import models as registry

    rows = ["| name | what it is |", "|---|---|"]
    for name, m in sorted(registry.registered().items(), key=lambda kv: (-kv[1].priority, kv[0])):
        what = re.sub(r",? expected at \S+", "", m.description)  # no machine's own path in README
        rows.append(f"| `{name}` | {what} |")
    return "\n".join(rows) + "\n"


def families() -> str:
    from .dit.registry import families as all_families

    rows = ["| family | pipeline | how text meets image | text streams (`encoder=`) | CFG as the pipeline does it "
            "| test model |", "|---|---|---|---|---|---|"]
    for f in all_families():
        rows.append(f"| {', '.join(f.models)} | {', '.join(f'`{p}`' for p in f.pipelines)} | {f.attention} | {f.text} "
                    f"| {f.guidance} | `tiny-{f.name}` |")
    return "\n".join(rows) + "\n"


def _number(x: str) -> str:
    v = float(x)
    text = f"{v:.2f}" if abs(v) < 1 else f"{v:.1f}"
    return text.replace("-", "−")


RUNS = {"01": "01: {N_PROMPTS} prompts/split", "03": "03: {N_PROMPTS} prompts",
        "04": "04: {N_PROMPTS} prompts", "05": "05: {N_PROMPTS} held-out templates",
        "06": "06: {N_IMAGES} renders", "07": "07: {N_PROMPTS} edits"}


def paper() -> str:
    rows = ["| claim | paper | here (95% CI) | n units | rule | run | verdict |", "|---|---|---|---|---|---|---|"]
    for path in sorted((ROOT / "figures").glob("0[1-9]_*_paper_vs_here.csv")):
        nb = path.name[:2]
        result = ROOT / "figures" / path.name.replace("_paper_vs_here.csv", ".json")
        params = json.loads(result.read_text()).get("run", {}).get("parameters", {}) if result.is_file() else {}
        run = RUNS.get(nb, nb).format(**{k: params.get(k, "?") for k in ("N_PROMPTS", "N_IMAGES")})
        with open(path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                if not r["here"]:
                    continue
                here = _number(r["here"]) + (f" ({_number(r['low'])} – {_number(r['high'])})" if r["low"] else "")
                rule = r["rule"].split(" (")[0].replace("|", "\\|")
                claim = r["claim"].replace("|", "\\|")
                rows.append(f"| {claim} | {_number(r['paper']) if r['paper'] else 'shown'} | {here} | {r['n']} "
                            f"| {rule} | {run} | **{r['verdict']}** |")
    return "\n".join(rows) + "\n"


def threads() -> str:
    """Before (torch's own threads, ``bench_threads_torch.json``) and after (daamlib's default, ``bench_threads.json``)."""
    def load(*names):
        found = [json.loads((ROOT / "benchmarks/results" / n).read_text()) for n in names
                 if (ROOT / "benchmarks/results" / n).is_file()]
        return {**found[0], "cells": [c for f in found for c in f["cells"]]}

    runs = [("torch's threads (before)", load("bench_threads_torch.json", "bench_threads_torch_notebook.json")),
            ("daamlib's default (now)", load("bench_threads.json", "bench_threads_notebook.json"))]
    cores = runs[0][1]["cores"]
    settings, loads = ("1", "2", "default"), ("idle", "busy")
    label = {"generate": "one generation", "cli": "the CLI, whole process", "notebook": "notebook 00, papermill"}
    head = " | ".join(f"{load}, {t if t != 'default' else f'default ({cores})'} thread{'s' if t != '1' else ''}"
                      for load in loads for t in settings)
    n = len(runs[0][1]["cells"][0]["runs"])
    rows = [f"| s, median [min–max] of {n} | {head} |", "|---" * (1 + len(loads) * len(settings)) + "|"]
    for name, data in runs:
        cells = {(c["what"], c["threads"], c["load"]): c for c in data["cells"]}
        for what in dict.fromkeys(c["what"] for c in data["cells"]):
            vals = []
            for load in loads:
                for t in settings:
                    c = cells.get((what, t, load))
                    vals.append("—" if c is None else f"{c['median_s']:.2f} [{c['min_s']:.2f}–{c['max_s']:.2f}]")
            rows.append(f"| {label.get(what, what)}, {name} | " + " | ".join(vals) + " |")
    return "\n".join(rows) + "\n"


def floor() -> str:
    runs = [json.loads(p.read_text()) for p in sorted((ROOT / "benchmarks/results").glob("bench_trace_cpu_floor_r*.json"))]
    rows = [f"| 3 steps, medians over {len(runs)} runs [min–max] | default ÷ floor | default ÷ LSE floor "
            "| `fused=False` ÷ floor |", "|---|---|---|---|"]
    models = list(dict.fromkeys(f["model"] for r in runs for f in r.get("floor", [])))
    for model in models:
        found = [f for r in runs for f in r.get("floor", []) if f["model"] == model]

        def cell(key):
            xs = [f[key] for f in found if key in f]
            return f"{statistics.median(xs):.1f}× [{min(xs):.1f}–{max(xs):.1f}]" if xs else "—"

        rows.append(f"| {model} | {cell('fused_multiple_of_floor')} | {cell('fused_multiple_of_lse_floor')} "
                    f"| {cell('explicit_multiple_of_floor')} |")
    return "\n".join(rows) + "\n"


# published configs (diffusers' pipeline docs and conversion scripts; docs/gpu.md says where each came from):
# denoiser and text encoder parameters (billions), traced attention modules, heads, image tokens at 1024² (for UNets:
# Σ h·w over the cross-attention layers at the model's own size)
GPU_MODELS = [
    # name, size, denoiser B, text encoders B, traced modules, image positions summed over them per step (UNets: Σ h·w;
    # transformers: modules × image tokens), heads × positions of the largest call
    ("SD 1.5", 512, 0.86, 0.12, 16, 26944, 8 * 4096),
    ("SD 2-base", 512, 0.87, 0.35, 16, 26944, 5 * 4096),
    ("SDXL", 1024, 2.6, 0.82, 70, 102400, 10 * 4096),
    ("SD3.5 Large", 1024, 8.1, 5.5, 38, 38 * 4096, 38 * 4096),
    ("FLUX.1 [dev]", 1024, 12.0, 4.9, 57, 57 * 4096, 24 * 4096),
    ("PixArt-Σ", 1024, 0.6, 4.8, 28, 28 * 4096, 16 * 4096),
    ("Sana 1600M", 1024, 1.6, 2.6, 20, 20 * 1024, 20 * 1024),
    ("Qwen-Image", 1024, 20.0, 8.3, 60, 60 * 4096, 24 * 4096),
    ("Chroma1-HD", 1024, 8.9, 4.8, 57, 57 * 4096, 24 * 4096),
    ("Z-Image Turbo", 1024, 6.2, 4.0, 30, 30 * 4096, 30 * 4096),
    ("FLUX.2 [dev]", 1024, 32.0, 24.0, 56, 56 * 4096, 48 * 4096),
    ("FLUX.2 [klein] 4B", 1024, 4.0, 4.0, 25, 25 * 4096, 24 * 4096),
]
GPU_STEPS, GPU_KEPT = 30, 20


def gpu() -> str:
    """GPU memory of one traced generation, computed (not measured): weights in bfloat16, maps by README's formula
    (4 B × steps × kept tokens × positions), the transient buffer of the largest call (4 B × heads × kept × N)."""
    rows = [f"| model (size) | weights, bf16: denoiser + text encoders | maps kept ({GPU_STEPS} steps, {GPU_KEPT} "
            "tokens) | traced, maps on the GPU | `store_device=\"cpu\"` | `store_device=\"cpu\"` + "
            "`enable_model_cpu_offload()` |", "|---|---|---|---|---|---|"]
    for name, size, den, txt, modules, positions, largest in GPU_MODELS:
        weights = 2 * (den + txt)  # GB
        maps = 4 * GPU_STEPS * GPU_KEPT * positions / 1e9
        transient = 4 * GPU_KEPT * largest / 1e9
        rows.append(f"| {name} ({size}², {modules} traced modules) | {weights:.1f} GB ({2 * den:.1f} + {2 * txt:.1f}) "
                    f"| {maps * 1e3:,.0f} MB | {weights + maps:.1f} GB | {weights + transient:.1f} GB "
                    f"| {2 * max(den, txt) + transient:.1f} GB |")
    return "\n".join(rows) + "\n"


def real_images() -> str:
    """Notebook 06's methods on exact masks and its absent-concept measures, from its CSVs in figures/ (the first
    embedded model) and figures/shapeworld-clip/ (the second), side by side."""
    folders = [("shapeworld", ROOT / "figures"), ("shapeworld-clip", ROOT / "figures" / "shapeworld-clip")]
    found = [(m, f) for m, f in folders if (f / "06_real_images_and_concepts_methods.csv").is_file()
             and (f / "06_real_images_and_concepts_absence.csv").is_file()]
    if not found:
        return "(notebook 06 has not written its tables to figures/ yet: `make figures`)\n"

    def read(folder, name):
        with open(folder / f"06_real_images_and_concepts_{name}.csv", newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def cell(value, low, high, n=None, tau=None):
        ci = f" ({_number(low)} – {_number(high)})" if low else ""
        return f"{_number(value)}{ci}" + (f", {n}" if n else "") + (f", τ {float(tau):g}" if tau else "")

    head = " | ".join(f"{m}: mIoU (95% CI), n images (nouns), τ" for m, _ in found)
    rows = [f"| ground truth | method | {head} |", "|---|---|" + "---|" * len(found)]
    tables = [read(f, "methods") for _, f in found]
    for i, r in enumerate(tables[0]):
        cells = [cell(t[i]["mIoU"], t[i]["low"], t[i]["high"], f"{int(float(t[i]['n images']))} "
                      f"({int(float(t[i]['n nouns']))})", t[i].get("τ")) for t in tables]
        rows.append(f"| {r['ground truth']} | {r['method']} | " + " | ".join(cells) + " |")
    head = " | ".join(f"{m}: value (95% CI), n" for m, _ in found)
    rows += ["", f"| absent concepts (test) | {head} |", "|---|" + "---|" * len(found)]
    tables = [read(f, "absence") for _, f in found]
    for i, r in enumerate(tables[0]):
        cells = [cell(t[i]["value"], t[i]["low"], t[i]["high"], str(int(float(t[i]["n"]))) if t[i]["n"] else "val")
                 for t in tables]
        rows.append(f"| {r['measure']} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


ABLATION_MODELS = (("shapeworld", ""), ("shapeworld-clip", "shapeworld-clip"), ("shapeworld-mmdit", "shapeworld-mmdit"))
FIG11 = re.compile(r"^all (.+?) − (.+) alone \(points\)$")


def depth() -> str:
    """Fig. 11 on each embedded model: a step or a layer group alone (its DAAM-0.4 mIoU on the nouns of the reported splits, Gen and Unreal), and
    what the whole sum gains over it, with its interval, from notebook 01's result and paper-vs-here rows."""
    rows = ["| model | alone | mIoU alone | all − alone, points (95% CI) | n images | verdict |",
            "|---|---|---|---|---|---|"]
    missing = []
    for model, sub in ABLATION_MODELS:
        folder = ROOT / "figures" / sub
        result, table = folder / "01_segmentation.json", folder / "01_segmentation_paper_vs_here.csv"
        if not (result.is_file() and table.is_file()):
            missing.append(model)
            continue
        curves = json.loads(result.read_text())["ablation"]
        alone = {"the first step": curves["first"]["1"], "the last step": curves["last"]["1"],
                 **{k.removeprefix("only "): v for k, v in curves["resolution"].items() if k != "all"}}
        with open(table, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                m = FIG11.match(r["claim"])
                if not m:
                    continue
                what = m.group(2)
                value = alone.get(what, alone.get(what.removesuffix(" layers")))
                _, gated, rule_said = r["reason"].partition("the rule alone: ")  # paper.gate's wording
                verdict = (f"too weak to test (the rule alone: {rule_said.split(';')[0]})" if gated
                           else f"**{r['verdict']}**")
                rows.append(f"| `{model}` | {what} | {_number(value) if value is not None else '?'} "
                            f"| {_number(r['here'])} ({_number(r['low'])} – {_number(r['high'])}) | {r['n']} "
                            f"| {verdict} |")
    note = f"\n(not run yet on {', '.join(missing)}: notebook 01 with its FIGURES_DIR)\n" if missing else ""
    return "\n".join(rows) + "\n" + note


SOURCES = {"models": models, "families": families, "paper": paper, "threads": threads, "floor": floor, "gpu": gpu,
           "real_images": real_images, "depth": depth}


def files() -> list[Path]:
    return [p for pattern in FILES for p in sorted(ROOT.glob(pattern))]


def render(text: str) -> str:
    def fill(m):
        return m.group(1) + SOURCES[m.group(2)]() + m.group(4)

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daamlib.docs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="rewrite nothing; list the blocks that differ (exit 1)")
    a = ap.parse_args(argv)
    stale = []
    for path in files():
        text = path.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            if m.group(2) not in SOURCES:
                print(f"{path.relative_to(ROOT)}: unknown generated block {m.group(2)!r}", file=sys.stderr)
                return 2
        new = render(text)
        if new != text:
            names = [m.group(2) for m in BLOCK.finditer(text) if SOURCES[m.group(2)]() != m.group(3)]
            stale.append(f"{path.relative_to(ROOT)}: {', '.join(names)}")
            if not a.check:
                path.write_text(new, encoding="utf-8")
    if stale and a.check:
        print("generated blocks differ from their sources (run python -m daamlib.docs):\n  " + "\n  ".join(stale),
              file=sys.stderr)
        return 1
    print(("rewrote " + "; ".join(stale)) if stale else "every generated block matches its source")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
