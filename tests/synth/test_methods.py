"""Every registered synthesis method runs end to end on the tiny model with a student."""

import math
from dataclasses import replace

import pytest
import torch

from dfq.run.recipe import synth_config
from dfq.synth import SYNTHESIZERS, Student, SynthConfig, synthesize
from tests.synth.tiny import tiny_config, tiny_model


@pytest.mark.parametrize("method", sorted(SYNTHESIZERS))
def test_method_gives_finite_images_and_losses(method):
    model = tiny_model(seed=1).requires_grad_(False)
    student = Student(model, list(model.parameters()))
    cfg = SynthConfig(
        method=method,
        num_images=6,
        batch_size=4,
        iters=2,
        log_every=1,
        student_steps=1,
        dfad={"iters": 2},
        rdskd={"iters": 2},
    )
    calib = synthesize(tiny_model(), cfg, tiny_config(), student=student, progress=False)
    assert calib.images.shape == (6, 3, 8, 8) and torch.isfinite(calib.images).all()
    losses = calib.metadata["final_losses"]
    assert losses and all(math.isfinite(v) for v in losses.values())


def test_the_four_methods_are_registered():
    assert {"bn", "rgal", "dfad", "rdskd"} <= set(SYNTHESIZERS)


@pytest.mark.parametrize("method", ["dfad", "rdskd"])
def test_cpu_imagenet_recipe_sizes_each_generator_game_and_it_runs(method):
    """`imagenet-cpu` gives DFAD and RDSKD budgets of their own (the library defaults take
    25 to 90 minutes a round at 224 px on a CPU), and the methods run with the recipe's settings."""
    data = tiny_config()
    cfg = synth_config("imagenet-cpu", data)
    budget = getattr(cfg, method)
    assert budget.iters < getattr(SynthConfig(), method).iters
    cfg = replace(cfg, method=method, num_images=8, batch_size=4, low_res=0, full_res_iters=0)
    model = tiny_model(seed=1).requires_grad_(False)
    student = Student(model, list(model.parameters()))
    calib = synthesize(tiny_model(), cfg, data, student=student, progress=False)
    assert calib.images.shape == (8, 3, 8, 8) and torch.isfinite(calib.images).all()
    losses = calib.metadata["final_losses"]
    assert losses and all(math.isfinite(v) for v in losses.values())
