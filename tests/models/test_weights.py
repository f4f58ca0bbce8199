import zipfile

import numpy as np
import pytest
import torch

from dfq.errors import DfqError
from dfq.models import load_model
from dfq.models.cifar_resnet import cifar_resnet


def _reference():
    torch.manual_seed(0)
    return cifar_resnet(20).eval()


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "module_prefix_on_state_dict"])
def test_checkpoint_layouts_load_the_same_tensors(tmp_path, wrap):
    ref = _reference()
    sd = ref.state_dict()
    obj = {
        "raw": sd,
        "state_dict": {"state_dict": sd, "best_prec1": 91.0},
        "model": {"model": sd, "epoch": 3},
        "module_prefix_on_state_dict": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    }[wrap]
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    model, _ = load_model("cifar10_resnet20", weights=path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x))


def test_real_checkpoint_from_cuda_dataparallel(resnet20_weights):
    raw = torch.load(resnet20_weights, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw["state_dict"])
    model, _ = load_model("cifar10_resnet20", weights=resnet20_weights)
    assert torch.equal(model.conv1.weight, raw["state_dict"]["module.conv1.weight"])


def test_missing_file(tmp_path):
    with pytest.raises(DfqError, match="weights file not found"):
        load_model("cifar10_resnet20", weights=tmp_path / "nope.th")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(DfqError, match="is not a PyTorch checkpoint"):
        load_model("cifar10_resnet20", weights=path)


def _zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hi")


def _onnx(path):
    torch.onnx.export(torch.nn.Linear(4, 2), torch.randn(1, 4), str(path), dynamo=False)


@pytest.mark.parametrize(
    "name, write, found",
    [
        ("empty.pth", lambda p: p.write_bytes(b""), "the file is empty"),
        (
            "notes.pth",
            lambda p: p.write_text("hello world"),
            "text file (starts with 'hello world')",
        ),
        ("a.zip", _zip, "a zip archive but not one torch.save writes"),
        ("model.bin", _onnx, "ONNX model; evaluate it with `dfq evaluate"),
        ("arr.pth", lambda p: np.save(p.open("wb"), np.zeros(3)), "NumPy .npy array"),
    ],
)
def test_not_a_checkpoint_says_what_it_is(tmp_path, name, write, found):
    path = tmp_path / name
    write(path)
    with pytest.raises(DfqError) as err:
        load_model("cifar10_resnet20", weights=path)
    assert str(err.value).startswith(f"{path} is not a PyTorch checkpoint: ")
    assert found in str(err.value)


def test_mismatched_keys_name_first_missing_and_unexpected(tmp_path):
    sd = _reference().state_dict()
    sd["fc.weight"] = sd.pop("linear.weight")
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(DfqError) as err:
        load_model("cifar10_resnet20", weights=tmp_path / "w.pth")
    msg = str(err.value)
    assert "1 missing key(s), first 'linear.weight'" in msg
    assert "1 unexpected key(s), first 'fc.weight'" in msg


def test_other_architecture_is_refused(tmp_path):
    torch.save(cifar_resnet(56).state_dict(), tmp_path / "w56.pth")
    with pytest.raises(DfqError, match="unexpected key.*layer1.3"):
        load_model("cifar10_resnet20", weights=tmp_path / "w56.pth")


def test_shape_mismatch_names_both_shapes(tmp_path):
    sd = cifar_resnet(20).state_dict()
    sd["conv1.weight"] = torch.zeros(16, 3, 5, 5)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(
        DfqError, match=r"'conv1.weight' has shape \(16, 3, 5, 5\) in the file but \(16, 3, 3, 3\)"
    ):
        load_model("cifar10_resnet20", weights=tmp_path / "w.pth")


def test_pickled_module_is_refused_without_running_it(tmp_path):
    torch.save(cifar_resnet(20), tmp_path / "whole.pt")
    with pytest.raises(DfqError, match="pickled Python objects"):
        load_model("cifar10_resnet20", weights=tmp_path / "whole.pt")


def test_dict_without_state_dict(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "w.pth")
    with pytest.raises(DfqError, match="without a state dict"):
        load_model("cifar10_resnet20", weights=tmp_path / "w.pth")


def test_head_width_follows_the_checkpoint(tmp_path):
    torch.save(cifar_resnet(20, num_classes=100).state_dict(), tmp_path / "w.pth")
    model, cfg = load_model("cifar10_resnet20", weights=tmp_path / "w.pth")
    assert model.linear.out_features == 100 and cfg.num_classes == 100
