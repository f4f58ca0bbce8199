"""Issue 13: RGAL at 1,000 classes. With the shipped ImageNet recipes (GPU and CPU), every
synthesis and distillation batch holds K classes x M images, so the relation losses have
positives and are non-zero on most batches."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dfq.quant.distill import distill
from dfq.quant.insert import prepare
from dfq.run.recipe import quant_config, synth_config
from dfq.synth import synthesize
from tests.synth.tiny import tiny_config, tiny_model

CLASSES = 1000


@pytest.mark.parametrize("recipe", ["imagenet", "imagenet-cpu"])
def test_relation_losses_are_active_at_1000_classes(recipe):
    model, data = tiny_model(num_classes=CLASSES), tiny_config(num_classes=CLASSES)
    model[-1].weight.data *= 20.0  # a confident head, as a trained classifier has
    cfg = synth_config(recipe, data)
    assert cfg.class_images >= 2 and cfg.relation and cfg.relation_weight > 0
    # the recipe's settings, at a size a test affords (8x8 images, 4 batches, few steps)
    cfg = replace(
        cfg,
        num_images=4 * cfg.batch_size,
        iters=40,
        log_every=4,
        low_res=0,
        full_res_iters=0,
        student_steps=0,
    )
    calib = synthesize(model, cfg, data, progress=False)
    logs = calib.metadata["history"]
    active = [any(h["rel"] > 0 for h in logs[i * 10 : (i + 1) * 10]) for i in range(4)]
    assert sum(active) >= 3, logs  # most batches (the old recipe: none, no positives)
    counts = [torch.bincount(b, minlength=CLASSES) for b in calib.labels.split(cfg.batch_size)]
    assert all(c.max() >= 2 for c in counts)  # positives in every batch

    qcfg = replace(quant_config(recipe, data), kd_iters=20, log_every=2, calib_batch_size=16)
    student = tiny_model(num_classes=CLASSES)
    student.load_state_dict(model.state_dict())
    prepare(student, qcfg, [calib.images])
    summary = distill(student, model, calib.images, qcfg, progress=False)
    rel = [h["rel"] for h in summary["history"]]
    assert sum(r > 0 for r in rel) > 0.5 * len(rel), rel
