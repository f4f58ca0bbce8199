import copy

import pytest
import torch

from dfq.models import load_model
from dfq.quant.distill import distill
from dfq.quant.insert import prepare
from dfq.quant.quant_config import QuantConfig
from dfq.quant.quantizer import activation_quantizers


def _first_step_moves(act_lr: float) -> tuple[list[float], list[float], float]:
    """One distillation step of a W4A4 resnet20: each activation step size before and its change,
    and the largest change of a weight."""
    torch.manual_seed(0)
    fp, _ = load_model("cifar10_resnet20", pretrained=False)
    calib = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    cfg = QuantConfig(
        kd_iters=1, kd_batch_size=8, kd_lr=1e-4, kd_params="all", kd_act_scale_lr=act_lr
    )
    student = copy.deepcopy(fp)
    prepare(student, cfg, [calib])
    qs = activation_quantizers(student)
    before = [float(q.scale.detach()) for q in qs]
    weights = {
        n: p.detach().clone() for n, p in student.named_parameters() if n.endswith(".weight")
    }
    distill(student, fp, calib, cfg, progress=False)
    moved = [abs(float(q.scale.detach()) - b) for q, b in zip(qs, before, strict=True)]
    params = dict(student.named_parameters())
    weight_move = max(float((params[n] - w).abs().max()) for n, w in weights.items())
    return before, moved, weight_move


def test_activation_step_sizes_learn_at_a_rate_relative_to_their_size():
    # Adam's first step moves each parameter with a gradient by lr (the step is lr * g / |g|)
    before, moved, weight_move = _first_step_moves(0.01)
    live = [(b, m) for b, m in zip(before, moved, strict=True) if m > 0]
    assert len(live) >= len(before) // 2
    ratios = sorted(m / (0.01 * b) for b, m in live)  # under 1 only where Adam's eps counts
    assert all(0.9 < r < 1.0 + 1e-4 for r in ratios)
    assert ratios[len(ratios) // 2] == pytest.approx(1.0, abs=0.01)
    assert weight_move == pytest.approx(1e-4, rel=0.02)  # the rest still at kd_lr
    _, moved_default, _ = _first_step_moves(0.0)
    assert max(moved_default) == pytest.approx(1e-4, rel=0.02)
    with pytest.raises(Exception, match="kd_act_scale_lr"):
        QuantConfig(kd_act_scale_lr=-1.0)
