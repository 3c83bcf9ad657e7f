"""Every notebook runs headlessly (papermill) on the embedded model at small parameters, and its recorded
numbers stay within the tolerances stored in tests/notebook_baselines.json.

A notebook that errors fails here. The baselines file holds, per notebook, the parameters of the small
run and checks of the form ``{"path": "table1/DAAM-0.4/Gen", "min": 30}`` on the JSON the notebook records
(``ge`` / ``le`` compare two paths, for "DAAM beats the whole-image baseline by a margin").
"""

import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "data" / "models" / "shapeworld" / "model_index.json"
BASELINES = json.loads((Path(__file__).with_name("notebook_baselines.json")).read_text())
VERDICTS = {"reproduces", "direction only", "inconclusive", "does not reproduce", "not comparable",
            "cannot be tested on this model"}  # daamlib.studies.paper.VERDICTS, typed out: a new one must be added here


def lookup(results: dict, path: str):
    value = results
    for key in path.split("/"):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(f"{path!r}: no {key!r} in the recorded results (keys: {list(value)[:12]})")
        value = value[key]
    return value


def check(results: dict, rule: dict) -> str | None:
    """None if ``rule`` holds, else what failed."""
    v = lookup(results, rule["path"])
    if "min" in rule and not (v >= rule["min"]):
        return f"{rule['path']} = {v} < {rule['min']}"
    if "max" in rule and not (v <= rule["max"]):
        return f"{rule['path']} = {v} > {rule['max']}"
    if "ge" in rule:
        other = lookup(results, rule["ge"]) + rule.get("margin", 0)
        if not (v >= other):
            return f"{rule['path']} = {v} < {rule['ge']} + {rule.get('margin', 0)} = {other}"
    if "equals" in rule and v != rule["equals"]:
        return f"{rule['path']} = {v!r} ≠ {rule['equals']!r}"
    if isinstance(v, float) and math.isnan(v):
        return f"{rule['path']} is NaN"
    return None


@pytest.mark.slow
@pytest.mark.skipif(not MODEL.is_file(), reason="the embedded model is not in data/models/shapeworld")
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_notebook_runs_and_keeps_its_numbers(name, tmp_path):
    import papermill as pm

    spec = BASELINES[name]
    params = {**spec["parameters"], "OUT_DIR": str(tmp_path / "out"), "FIGURES_DIR": str(tmp_path / "figures")}
    pm.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
                        parameters=params, kernel_name="python3", progress_bar=False, cwd=str(REPO / "notebooks"))
    results = json.loads((tmp_path / "figures" / f"{name}.json").read_text())
    failures = [f for f in (check(results, rule) for rule in spec["checks"]) if f]
    assert not failures, f"{name}: " + "; ".join(failures)
    # the last section: paper vs here, a verdict on every row, also as CSV; and what produced the numbers
    table = results["paper_vs_here"]
    assert table and all(r["verdict"] in VERDICTS and r["reason"] for r in table), table
    # every decided row names its rule; a decided row has at least the verdicts' minimum of units
    decided = [r for r in table if r["verdict"] in ("reproduces", "direction only", "inconclusive", "does not reproduce")]
    assert all(r["rule"] and r["n"] >= 10 for r in decided), decided
    assert (tmp_path / "figures" / f"{name}_paper_vs_here.csv").is_file()
    assert results["run"]["parameters"]["MODEL_ID"] == "shapeworld" and results["run"]["weights"]
    assert {"torch", "diffusers", "daamlib"} <= set(results["run"]["versions"])
    for fig in spec.get("figures", []):
        assert (tmp_path / "figures" / fig).stat().st_size > 2000, f"{fig} was not written"


def test_baseline_checks_catch_a_regression():
    results = {"table1": {"DAAM-0.4": {"Gen": 40.0}, "whole image": {"Gen": 20.0}}}
    assert check(results, {"path": "table1/DAAM-0.4/Gen", "ge": "table1/whole image/Gen", "margin": 15}) is None
    assert "<" in check(results, {"path": "table1/DAAM-0.4/Gen", "ge": "table1/whole image/Gen", "margin": 25})
    assert check(results, {"path": "table1/DAAM-0.4/Gen", "min": 50}).startswith("table1/DAAM-0.4/Gen = 40.0 <")
    with pytest.raises(KeyError, match="no 'Unreal'"):
        lookup(results, "table1/DAAM-0.4/Unreal")
