"""`load_model`: a name (and optionally a checkpoint) in, an eval-mode model and its preprocessing out."""
from __future__ import annotations

import difflib
import fnmatch
from functools import lru_cache
from pathlib import Path

from torch import nn

from dfq.errors import DfqError
from dfq.models.data_config import DataConfig
from dfq.models.sources import SOURCES
from dfq.models.weights import apply_state_dict, read_state_dict

# Bare names are looked up in this order: dfq's zoo, then torchvision, then timm.
SEARCH_ORDER = ("dfq", "torchvision", "timm")


@lru_cache(maxsize=None)
def source_names(source: str) -> tuple[str, ...]:
    return tuple(SOURCES[source].names())


def list_models(pattern: str | None = None) -> dict[str, list[str]]:
    """Loadable names by source, filtered by a shell-style pattern (`*resnet*`)."""
    out = {}
    for src in SEARCH_ORDER:
        names = source_names(src)
        if pattern:
            pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
            names = tuple(n for n in names if fnmatch.fnmatch(n, pat))
        out[src] = list(names)
    return out


def resolve_name(name: str) -> tuple[str, str]:
    """Split `source:arch` or find a bare name's source; unknown names get a suggestion."""
    if ":" in name:
        src, arch = name.split(":", 1)
        if src not in SOURCES:
            raise DfqError(
                f"unknown model source '{src}' in '{name}'; use one of {', '.join(SEARCH_ORDER)}"
            )
        if arch not in source_names(src):
            raise DfqError(_unknown(name, arch, source_names(src), prefix=f"{src}:"))
        return src, arch
    for src in SEARCH_ORDER:
        if name in source_names(src):
            return src, name
    every = [n for src in SEARCH_ORDER for n in source_names(src)]
    raise DfqError(_unknown(name, name, every))


def load_model(
    name: str,
    weights: str | Path | None = None,
    pretrained: bool | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, DataConfig]:
    """Build model `name` in eval mode and return it with its data config.

    Args:
        name: `resnet18` (dfq zoo, then torchvision, then timm), `torchvision:NAME`, `timm:NAME`,
            or a dfq zoo name such as `cifar10_resnet20`.
        weights: a checkpoint to load (raw state dict, or one under `state_dict` / `model`).
        pretrained: download/use cached published weights; defaults to True unless `weights` is given.
        num_classes: size of the classifier head, when it differs from the architecture's default.
    """
    if weights is not None and pretrained:
        raise DfqError("give either --weights or --pretrained, not both")
    if pretrained is None:
        pretrained = weights is None
    src, arch = resolve_name(name)
    model, cfg = SOURCES[src].build(arch, pretrained, num_classes)
    if weights is not None:
        apply_state_dict(model, read_state_dict(weights), str(weights))
    return model.eval(), cfg


def _unknown(name: str, arch: str, candidates: tuple[str, ...] | list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(arch, candidates, n=1, cutoff=0.6)
    hint = f"did you mean {prefix}{close[0]}?" if close else "run `dfq models` to list the names"
    return f"unknown model '{name}'; {hint}"
