import copy

import torch
from torch import nn

from dfq.models import load_model
from dfq.quant.distill import distill
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


def test_feature_points_are_the_last_block_of_each_resolution_not_bare_layers():
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
