import urllib.error

import pytest
import torch

from dfq.errors import DfqError
from dfq.models import list_models, load_model, resolve_name


@pytest.mark.parametrize(
    "name, size",
    [
        ("resnet18", 64),
        ("torchvision:mobilenet_v2", 64),
        ("torchvision:efficientnet_b0", 64),
        ("timm:resnet18", 64),
        ("timm:mobilenetv3_small_100", 64),
        ("cifar10_resnet20", 32),
    ],
)
def test_random_init_models_build_and_run(name, size):
    model, cfg = load_model(name, pretrained=False)
    assert not model.training
    assert cfg.input_size[0] == 3 and len(cfg.mean) == 3
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, cfg.num_classes)


def test_bare_name_prefers_torchvision_over_timm():
    assert resolve_name("resnet18") == ("torchvision", "resnet18")
    assert resolve_name("timm:resnet18") == ("timm", "resnet18")
    assert resolve_name("cifar10_resnet56") == ("dfq", "cifar10_resnet56")


def test_data_configs():
    _, tv = load_model("resnet18", pretrained=False)
    assert tv.input_size == (3, 224, 224) and tv.crop_pct == pytest.approx(0.875)
    _, tm = load_model("timm:resnet18", pretrained=False)
    assert tm.interpolation == "bicubic" and tm.crop_pct == pytest.approx(0.95)
    _, zoo = load_model("cifar10_resnet20", pretrained=False)
    assert zoo.input_size == (3, 32, 32) and zoo.num_classes == 10


def test_unknown_name_suggests():
    with pytest.raises(DfqError, match=r"unknown model 'resnt18'; did you mean resnet18\?"):
        load_model("resnt18")
    with pytest.raises(DfqError, match="did you mean timm:mobilenetv3_small_100"):
        load_model("timm:mobilenetv3_smal_100")
    with pytest.raises(DfqError, match="'tf' is not a model source.*cannot import 'tf'"):
        load_model("tf:resnet18")


@pytest.mark.parametrize(
    "typed, suggested",
    [
        ("resnt20", "cifar10_resnet20"),  # not timm's resnet200: the zoo name without 'cifar10_'
        ("resnet56", "cifar10_resnet56"),
        ("timm:resnt20", "timm:resnet200"),  # an explicit source is the only one searched
        ("torchvision:resnt18", "torchvision:resnet18"),
    ],
)
def test_suggestions_prefer_the_zoo_and_respect_the_source(typed, suggested):
    with pytest.raises(DfqError, match=rf"did you mean {suggested}\?"):
        load_model(typed)


def test_weights_and_pretrained_conflict():
    with pytest.raises(DfqError, match="not both"):
        load_model("resnet18", weights="x.pth", pretrained=True)


def test_offline_torchvision_names_cache_path_and_weights_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(url, dst, **kw):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(DfqError) as err:
        load_model("resnet18")
    msg = str(err.value)
    assert str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "--weights" in msg
    assert not list((tmp_path / "checkpoints").glob("*.partial"))


def test_offline_timm_names_hf_cache(tmp_path, monkeypatch):
    import huggingface_hub

    from dfq.models import hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(hub, "host_reachable", lambda host: False)
    with pytest.raises(DfqError, match=r"models--timm--resnet18\..*--weights"):
        load_model("timm:resnet18")


def test_list_models_filters():
    found = list_models("cifar10_resnet*")
    assert found["dfq"] == [
        "cifar10_resnet20",
        "cifar10_resnet32",
        "cifar10_resnet44",
        "cifar10_resnet56",
    ]
    assert "resnet18" in list_models("resnet18")["torchvision"]
