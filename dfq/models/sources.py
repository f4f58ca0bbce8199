"""Where models come from: dfq's CIFAR zoo, torchvision and timm, each a registered source."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dfq.errors import DfqError
from dfq.models.cifar_resnet import cifar_resnet
from dfq.models.data_config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from dfq.models.hub import cached_hf_file, cached_url
from dfq.models.weights import apply_state_dict, read_state_dict


@dataclass
class ModelSource:
    """A family of loadable models: `names()` lists them, `build()` makes one."""

    name: str
    names: Callable[[], list[str]]
    build: Callable[[str, bool, int | None], tuple[nn.Module, DataConfig]]


SOURCES: dict[str, ModelSource] = {}


def register_source(name: str, names: Callable[[], list[str]]):
    def deco(build):
        SOURCES[name] = ModelSource(name, names, build)
        return build

    return deco


# -----------------------------------------------------------------------------------------------
# dfq zoo
_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
ZOO = {
    "cifar10_resnet20": (20, _AKAMASTER + "resnet20-12fca82f.th"),
    "cifar10_resnet32": (32, _AKAMASTER + "resnet32-d509ac18.th"),
    "cifar10_resnet44": (44, _AKAMASTER + "resnet44-014dd654.th"),
    "cifar10_resnet56": (56, _AKAMASTER + "resnet56-4bfd9763.th"),
}


@register_source("dfq", lambda: sorted(ZOO))
def _build_zoo(arch: str, pretrained: bool, num_classes: int | None):
    depth, url = ZOO[arch]
    model = cifar_resnet(depth, num_classes or 10)
    if pretrained:
        apply_state_dict(model, read_state_dict(cached_url(url, arch)), url)
    cfg = DataConfig((3, 32, 32), IMAGENET_MEAN, IMAGENET_STD, "bilinear", 1.0, num_classes or 10)
    return model, cfg


# ------------------------------------------------------------------------------------------
# torchvision
def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


@register_source("torchvision", _torchvision_names)
def _build_torchvision(arch: str, pretrained: bool, num_classes: int | None):
    import torchvision

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    cfg = DataConfig(num_classes=num_classes or 1000)
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        weights = None
    if weights is not None:
        t = weights.transforms()
        crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
        cfg = DataConfig(
            (3, crop, crop),
            t.mean,
            t.std,
            t.interpolation.value,
            round(crop / resize, 4),
            num_classes or 1000,
        )
    if pretrained:
        if weights is None:
            raise DfqError(
                f"torchvision has no pretrained weights for '{arch}'; pass --weights PATH"
            )
        apply_state_dict(
            model,
            torch.load(cached_url(weights.url, arch), map_location="cpu", weights_only=True),
            weights.url,
        )
    return model, cfg


# -------------------------------------------------------------------------------------------------
# timm
def _timm_names() -> list[str]:
    import timm

    return sorted(timm.list_models())


@register_source("timm", _timm_names)
def _build_timm(arch: str, pretrained: bool, num_classes: int | None):
    import timm

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = timm.create_model(arch, pretrained=False, **kwargs)
    if pretrained:
        repo = model.pretrained_cfg.get("hf_hub_id")
        file = cached_hf_file(repo, arch) if repo else None
        overlay = {"file": file} if file else None
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    d = timm.data.resolve_data_config({}, model=model)
    cfg = DataConfig(
        d["input_size"], d["mean"], d["std"], d["interpolation"], d["crop_pct"], model.num_classes
    )
    return model, cfg
