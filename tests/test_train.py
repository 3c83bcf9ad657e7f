"""The ShapeWorld trainer on a toy-sized model: it trains, exports a loadable folder, and a stopped run resumes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from daamlib.shapeworld import train

TOY = ["--vae-steps", "2", "--vae-batch", "4", "--batch", "4", "--pool", "64", "--refresh", "16", "--refresh-every", "2",
       "--unet-channels", "8,16,32", "--warmup", "2", "--log-every", "1", "--export-minutes", "1000"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_train_export_and_resume(tmp_path):
    from diffusers import StableDiffusionPipeline

    run, export = tmp_path / "run", tmp_path / "export"
    args = ["--run-dir", str(run), "--export-dir", str(export), *TOY]
    train.main([*args, "--steps", "3"])
    state = json.loads((export / "training_state.json").read_text())
    assert state["step"] == 3 and state["batch"] == 4 and set(state["wall_seconds_by_device"]) == {"cpu"}
    assert [r["step"] for r in rows(run / "loss.csv")] == ["1", "2", "3"]
    pipe = StableDiffusionPipeline.from_pretrained(export)
    assert pipe.unet.config.block_out_channels == [8, 16, 32]

    train.main([*args, "--steps", "5"])  # continues from runs/…/ckpt.pt
    log = rows(run / "loss.csv")
    assert [r["step"] for r in log] == ["1", "2", "3", "4", "5"] and {r["batch"] for r in log} == {"4"}
    state = json.loads((export / "training_state.json").read_text())
    assert state["step"] == 5 and state["scene_counter"] == 64 + 2 * 16  # refreshes at steps 2 and 4


def test_worker_processes_render_the_same_scenes():
    here = list(train.SceneRenderer(seed=0, chunk=5).render(10, 22))
    pool = train.SceneRenderer(seed=0, workers=2, chunk=5)
    try:
        there = list(pool.render(10, 22))
        ahead = list(pool.render_ahead(10, 22)())
    finally:
        pool.close()
    for a, b, c in zip(here, there, ahead):
        assert a[0] == b[0] == c[0] and a[2] == b[2] == c[2]
        assert np.array_equal(a[1], b[1]) and np.array_equal(a[1], c[1])
    assert [a[0] for a in here] == [10, 15, 20] and sum(len(a[2]) for a in here) == 12


def test_old_loss_logs_get_a_batch_column(tmp_path):
    log = tmp_path / "loss.csv"
    log.write_text("step,loss,lr,sec_per_step,wall_seconds,time_utc\r\n10,0.5,1e-4,1.0,10,00:00:00\r\n")
    train.add_batch_column(log, 32)
    assert rows(log) == [{"step": "10", "loss": "0.5", "lr": "1e-4", "sec_per_step": "1.0", "wall_seconds": "10",
                          "time_utc": "00:00:00", "batch": "32"}]
    train.add_batch_column(log, 256)  # already there: unchanged
    assert rows(log)[0]["batch"] == "32"


def test_cooldown_needs_a_time_limit():
    with pytest.raises(SystemExit):
        train.parse_args(["--cooldown-minutes", "2"])
    assert train.parse_args(["--cooldown-minutes", "2", "--max-minutes", "7"]).cooldown_minutes == 2
