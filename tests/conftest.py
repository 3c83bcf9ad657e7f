import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # notebook kernels and subprocesses inherit it
torch.set_num_threads(1)  # 2 cores: leave one for whatever else runs


@pytest.fixture(scope="session")
def tiny():
    """Tiny pipelines by kind, built once per test session."""
    from daamlib.testing.tiny import tiny_pipeline

    cache = {}

    def get(kind="sd1"):
        if kind not in cache:
            cache[kind] = tiny_pipeline(kind)
        return cache[kind]

    return get


def run(pipe, prompt, seed=0, **kw):
    """Run a pipeline with a fixed seed (or one generator per seed in a list), returning the image tensor."""
    gen = [torch.Generator().manual_seed(s) for s in seed] if isinstance(seed, list) else torch.Generator().manual_seed(seed)
    kw.setdefault("num_inference_steps", 2)
    kw.setdefault("guidance_scale", 5.0)
    return pipe(prompt, generator=gen, output_type="pt", **kw).images


@pytest.fixture(scope="session")
def traced(tiny):
    """``traced(prompt, steps=2, kind="sd1")``: the heat maps (image included) of one tiny-pipeline
    generation, made once per session. Tests read them; none may modify them."""
    from daamlib import trace

    cache = {}

    def get(prompt, steps=2, kind="sd1"):
        if (prompt, steps, kind) not in cache:
            pipe = tiny(kind)
            with trace(pipe) as tc:
                images = run(pipe, prompt, num_inference_steps=steps)
            cache[prompt, steps, kind] = tc.heat_maps(0, image=images[0])
        return cache[prompt, steps, kind]

    return get


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Expose each phase's report on the test item (``item.rep_call``), for fixtures that act on failures."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
