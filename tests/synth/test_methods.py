"""Every registered synthesis method runs end to end on the tiny model with a student."""

import math

import pytest
import torch

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
