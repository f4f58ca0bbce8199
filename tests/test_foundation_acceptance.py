"""Issue 2 acceptance: real checkpoints on real images give the published accuracy exactly."""

import pytest

from dfq.data import load_images
from dfq.evaluate import evaluate
from dfq.models import load_model
from tests.conftest import shared_file


@pytest.mark.parametrize(
    "name, weights, data, top1",
    [
        ("cifar10_resnet20", "cifar10-resnet20.th", "cifar10-test-lossless-846.npz", 91.73),
        ("cifar10_resnet20", "cifar10-resnet20.th", "cifar10-test-jpeg.npz", 81.03),
        ("cifar10_resnet56", "cifar10-resnet56.th", "cifar10-test-lossless-846.npz", 93.26),
        ("cifar10_resnet56", "cifar10-resnet56.th", "cifar10-test-jpeg.npz", 83.20),
    ],
)
def test_published_accuracy(name, weights, data, top1):
    model, cfg = load_model(name, weights=shared_file(f"models/{weights}"))
    images = load_images(shared_file(f"data/{data}"), cfg)
    assert evaluate(model, images, cfg, batch_size=500, show_progress=False)["top1"] == top1
