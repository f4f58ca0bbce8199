import sys
import textwrap

import pytest
import torch
import torchvision

from dfq.errors import DfqError
from dfq.models import load_model

TINY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def tiny_net(num_classes=10):
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
        )

    def not_a_module():
        return 42

    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(TINY)
    (tmp_path / "broken.py").write_text("import does_not_exist_anywhere\n")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for mod in ("mymodels", "broken"):
        sys.modules.pop(mod, None)


def test_factory_loads_and_runs(user_package):
    model, cfg = load_model("mymodels:tiny_net", data_overrides={"input_size": (3, 16, 16)})
    assert cfg.num_classes == 10 and cfg.input_size == (3, 16, 16)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_factory_gets_num_classes_and_weights(user_package):
    model, _ = load_model("mymodels:tiny_net", num_classes=4)
    torch.save(model.state_dict(), user_package / "w.pth")
    again, cfg = load_model("mymodels:tiny_net", weights=user_package / "w.pth")
    assert cfg.num_classes == 4  # head width read from the checkpoint
    assert torch.equal(again[5].weight, model[5].weight)


@pytest.mark.parametrize(
    "name, message",
    [
        ("broken:net", "cannot import 'broken'"),
        ("nomodule_xyz:net", "cannot import 'nomodule_xyz'"),
        ("mymodels:missing", "has no callable 'missing'"),
        ("mymodels:NOT_CALLABLE", "has no callable 'NOT_CALLABLE'"),
        ("mymodels:not_a_module", "returned a int, not a torch.nn.Module"),
    ],
)
def test_factory_errors(user_package, name, message):
    with pytest.raises(DfqError, match=message):
        load_model(name)


def test_head_size_from_checkpoint(tmp_path):
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pth")
    model, cfg = load_model("resnet18", weights=tmp_path / "r18.pth")
    assert model.fc.out_features == 10 and cfg.num_classes == 10


def test_real_mismatch_elsewhere_still_fails(tmp_path):
    sd = torchvision.models.resnet18(num_classes=10).state_dict()
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(sd, tmp_path / "r18.pth")
    with pytest.raises(DfqError, match=r"'conv1.weight' has shape \(64, 3, 3, 3\)"):
        load_model("resnet18", weights=tmp_path / "r18.pth")


def test_pickled_module_needs_trust(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(DfqError, match="--trust-checkpoint"):
        load_model(str(tmp_path / "whole.pt"))
    model, cfg = load_model(str(tmp_path / "whole.pt"), trust_checkpoint=True)
    assert cfg.num_classes == 3
    x = torch.randn(2, 3, 2, 2)
    assert torch.allclose(model(x), net(x))


def test_torchscript_needs_trust(tmp_path):
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    net.save(str(tmp_path / "net.ts"))
    with pytest.raises(DfqError, match="runs code stored in the file"):
        load_model(str(tmp_path / "net.ts"))
    model, _ = load_model(str(tmp_path / "net.ts"), trust_checkpoint=True)
    assert model(torch.randn(1, 3, 2, 2)).shape == (1, 3)


def test_bad_overrides_are_refused():
    with pytest.raises(DfqError, match="three positive numbers"):
        load_model("cifar10_resnet20", pretrained=False, data_overrides={"input_size": (3, 0, 0)})
    with pytest.raises(DfqError, match="mean and std need 3 values"):
        load_model("cifar10_resnet20", pretrained=False, data_overrides={"mean": (0.5, 0.5)})
