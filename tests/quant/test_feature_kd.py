import copy
import math

import pytest
import torch
from torch import nn

from dfq.models import load_model
from dfq.quant.data_source import FixedImages, low_res_view
from dfq.quant.distill import _phase_cosine, distill
from dfq.quant.feature_kd import feature_loss, feature_points, stage_features
from dfq.quant.insert import prepare
from dfq.quant.quant_config import QuantConfig


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x))


def test_feature_points_are_the_last_block_of_each_resolution_or_every_block_not_bare_layers():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # a stem: a bare layer
        _Block(4, 4, 1),
        _Block(4, 8, 2),
        nn.Conv2d(8, 8, 1),  # a head conv at the last resolution: bare, so not compared
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    assert feature_points(model, (3, 16, 16)) == ["1", "2"]
    resnet, _ = load_model("cifar10_resnet20", pretrained=False)
    assert feature_points(resnet, (3, 32, 32)) == ["layer1.2", "layer2.2", "layer3.2"]
    every = [f"layer{s}.{b}" for s in (1, 2, 3) for b in (0, 1, 2)]
    assert feature_points(resnet, (3, 32, 32), every_block=True) == every
    assert feature_points(model, (3, 16, 16), every_block=True) == ["1", "2"]


def test_feature_loss_is_the_mean_of_normalized_squared_errors():
    t = {"a": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([[3.0]])}
    s = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[1.5]])}
    # a: 4 / 5; b: 2.25 / 9
    assert torch.isclose(feature_loss(s, t), torch.tensor((0.8 + 0.25) / 2))
    assert feature_loss(t, t) == 0


def _stage_error(student, teacher, images, points) -> float:
    with torch.no_grad(), stage_features(student, teacher, points) as (s, t):
        student(images)
        teacher(images)
        return float(feature_loss(s, t))


def test_feature_distillation_pulls_stage_outputs_towards_the_fp_model(resnet20_weights):
    fp, _ = load_model("cifar10_resnet20", weights=resnet20_weights)
    calib = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    points = feature_points(fp, (3, 32, 32))
    errors = {}
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        model = copy.deepcopy(fp)
        cfg = QuantConfig(
            wbits=3, abits=3, kd_iters=15, kd_batch_size=32, kd_lr=1e-3, kd_feature_weight=weight
        )
        prepare(model, cfg, [calib])
        before = _stage_error(model, fp, calib, points)
        summary = distill(model, fp, calib, cfg, progress=False)
        errors[weight] = _stage_error(model, fp, calib, points)
        assert ("feature_last" in summary) == (weight > 0)
    assert errors[10.0] < 0.8 * before
    assert errors[10.0] < 0.9 * errors[0.0]  # 0.233 against 0.267 when written


def _cached_feature_cfg(**changes) -> QuantConfig:
    """W4A4, feature distillation on flip-only views (teacher outputs cached), batches of 8."""
    base = dict(wbits=4, abits=4, kd_batch_size=8, kd_lr=1e-3, kd_feature_weight=1.0)
    return QuantConfig(**base, kd_augment="flip", log_every=1, **changes)


@pytest.mark.parametrize("compared", ["stages", "blocks"])
def test_cached_stage_outputs_match_the_teacher_and_spare_its_forward_passes(compared):
    torch.manual_seed(0)
    fp, _ = load_model("cifar10_resnet20", pretrained=False)
    calib = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = _cached_feature_cfg(kd_iters=3, kd_feature_points=compared)
    points = feature_points(fp, (3, 32, 32), every_block=compared == "blocks")
    models = {cached: copy.deepcopy(fp) for cached in (True, False)}  # before the hook
    histories, step_calls = {}, []  # teacher calls on a distillation batch (8 images)
    handle = fp.register_forward_hook(
        lambda _m, inp, _o: step_calls.append(1) if len(inp[0]) == cfg.kd_batch_size else None
    )
    for cached, model in models.items():
        prepare(model, cfg, [calib])
        step_calls.clear()
        if cached:
            summary = distill(model, fp, calib, cfg, progress=False)
        else:  # the same source without the stage cache: the teacher runs each step
            source = FixedImages(calib, fp, "flip", 0, cfg.kd_batch_size)
            summary = distill(model, fp, source, cfg, progress=False)
        histories[cached] = [h["feature"] for h in summary["history"]]
        assert len(step_calls) == (0 if cached else cfg.kd_iters)
    handle.remove()
    assert histories[True] == pytest.approx(histories[False], rel=1e-4)
    assert histories[True][0] > 0
    source = FixedImages(calib, fp, "flip", 0, 8, stage_names=points)
    x, _ = source.batch(8, fp, fp, 0, torch.Generator().manual_seed(0))
    with torch.no_grad(), stage_features(fp, fp, points) as (_, t):
        fp(x)
        for name in points:
            assert torch.allclose(source.stages[name], t[name], atol=1e-5)


def test_low_resolution_distillation_reads_a_resized_copy_then_the_full_images():
    torch.manual_seed(0)
    fp, _ = load_model("cifar10_resnet20", pretrained=False)
    calib = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    cfg = _cached_feature_cfg(kd_iters=5, kd_low_res=16, kd_full_res_iters=2)
    student = copy.deepcopy(fp)
    prepare(student, cfg, [calib])
    sizes, teacher_steps = [], []
    handles = [
        student.register_forward_hook(lambda _m, inp, _o: sizes.append(inp[0].shape[-1])),
        fp.register_forward_hook(
            lambda _m, inp, _o: teacher_steps.append(1) if len(inp[0]) == 8 else None
        ),
    ]
    summary = distill(student, fp, calib, cfg, progress=False)
    for h in handles:
        h.remove()
    assert sizes == [16, 16, 16, 32, 32]
    assert teacher_steps == []  # logits and stage outputs cached at both sizes
    assert all(h["feature"] > 0 for h in summary["history"])
    with pytest.raises(Exception, match="kd_full_res_iters"):
        QuantConfig(kd_iters=5, kd_full_res_iters=6)


def test_low_res_view_keeps_the_aspect_ratio_and_the_mean():
    x = torch.rand(2, 3, 40, 20)
    small = low_res_view(x, 20)
    assert small.shape == (2, 3, 20, 10)
    assert torch.allclose(small.mean((2, 3)), x.mean((2, 3)), atol=0.02)
    assert low_res_view(x, 0) is None and low_res_view(x, 40) is None


def test_each_distillation_phase_has_its_own_cosine_learning_rate():
    one = [_phase_cosine(s, 0, 4) for s in range(4)]
    assert one == pytest.approx(
        [1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4)]
    )
    two = [_phase_cosine(s, 3, 5) for s in range(5)]  # restarts at the full-resolution phase
    assert two == pytest.approx([1.0, 0.75, 0.25, 1.0, 0.5])
