import pytest
import torch
from torch import nn

from dfq.data import ImageSet
from dfq.evaluate import default_batch_size, evaluate
from dfq.models.data_config import DataConfig

CFG = DataConfig((3, 4, 4), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear", 1.0, 6)


class MeanPixelClassifier(nn.Module):
    """Predicts class k for images whose mean pixel is k / 10: accuracy is known by construction."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3), keepdim=False)[:, None]
        centres = torch.arange(6, dtype=x.dtype)[None] / 10
        return -(m - centres).abs()


def test_top1_and_top5_by_construction():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    x = (labels.float() / 10).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    wrong = labels.clone()
    wrong[:2] = torch.tensor([5, 4])  # image 0 looks like class 0, labelled 5: rank 6
    data = ImageSet(x, wrong)
    res = evaluate(MeanPixelClassifier(), data, CFG, batch_size=3, show_progress=False)
    assert res["n"] == 8
    assert res["top1"] == pytest.approx(100 * 6 / 8)
    # image 1 looks like class 1, labelled 4: rank 5, inside the top 5; image 0 is not
    assert res["top5"] == pytest.approx(100 * 7 / 8)
    assert res["seconds"] >= 0


def test_evaluate_accepts_a_predictor_function():
    data = ImageSet(torch.zeros(4, 3, 4, 4), torch.tensor([2, 2, 2, 1]))

    def always_two(x):
        return torch.nn.functional.one_hot(torch.full((len(x),), 2), 6).float()

    assert evaluate(always_two, data, CFG, show_progress=False)["top1"] == 75.0


def test_default_batch_size_keeps_cpu_batches_near_2_21_pixels():
    def size(h, device="cpu"):
        return default_batch_size(DataConfig((3, h, h), num_classes=10), device)

    assert [size(32), size(64), size(224), size(299), size(512), size(2048)] == [
        256,
        256,
        32,
        16,
        8,
        1,
    ]
    assert size(224, "cuda") == 256
