"""`load_model`: a name (and optionally a checkpoint) in, an eval-mode model and its preprocessing
out."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import replace
from functools import cache
from pathlib import Path

from torch import nn

from dfq.errors import DfqError
from dfq.models.custom import build_from_factory, load_model_file, looks_like_file
from dfq.models.data_config import DataConfig
from dfq.models.sources import SOURCES
from dfq.models.weights import apply_state_dict, read_state_dict

# Bare names are looked up in this order: dfq's zoo, then torchvision, then timm.
SEARCH_ORDER = ("dfq", "torchvision", "timm")


@cache
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
    """Split `source:arch` (a registered source) or find a bare name's source, with suggestions."""
    if ":" in name:
        src, arch = name.split(":", 1)
        if arch not in source_names(src):
            raise DfqError(_unknown(name, arch, (src,), prefix=f"{src}:"))
        return src, arch
    for src in SEARCH_ORDER:
        if name in source_names(src):
            return src, name
    raise DfqError(_unknown(name, name, SEARCH_ORDER))


def load_model(
    name: str,
    weights: str | Path | None = None,
    pretrained: bool | None = None,
    num_classes: int | None = None,
    trust_checkpoint: bool = False,
    data_overrides: dict | None = None,
) -> tuple[nn.Module, DataConfig]:
    """Build model `name` in eval mode and return it with its data config.

    Args:
        name: `resnet18` (dfq zoo, then torchvision, then timm), `torchvision:NAME`, `timm:NAME`,
            a dfq zoo name such as `cifar10_resnet20`, a custom factory `package.module:callable`,
            or a TorchScript / pickled-module file (only with `trust_checkpoint`).
        weights: a checkpoint to load (raw state dict, or one under `state_dict` / `model`). When
        its
            classifier has another number of classes, the model is built with that number.
        pretrained: download/use cached published weights; defaults to True unless `weights` is
        given. num_classes: size of the classifier head, when it differs from the architecture's
        default. trust_checkpoint: allow whole-model files, which run code from the file when
        loaded. data_overrides: DataConfig fields to replace (`input_size`, `mean`, `std`, ...).
    """
    if weights is not None and pretrained:
        raise DfqError("give either --weights or --pretrained, not both")
    state = read_state_dict(weights) if weights is not None else None
    if looks_like_file(name):
        model, cfg = _from_file(Path(name), trust_checkpoint)
    elif ":" in name and name.split(":", 1)[0] not in SOURCES:
        model = build_from_factory(name, num_classes)
        ckpt_classes = _checkpoint_classes(model, state) if num_classes is None else None
        if ckpt_classes is not None:
            model = build_from_factory(name, ckpt_classes)
        cfg = DataConfig(num_classes=_head(model)[1] or num_classes or 1000)
    else:
        src, arch = resolve_name(name)
        use_pretrained = weights is None if pretrained is None else pretrained
        model, cfg = SOURCES[src].build(arch, use_pretrained, num_classes)
        ckpt_classes = _checkpoint_classes(model, state) if num_classes is None else None
        if ckpt_classes is not None:
            model, cfg = SOURCES[src].build(arch, False, ckpt_classes)
    if state is not None:
        apply_state_dict(model, state, str(weights))
    if data_overrides:
        cfg = replace(cfg, **{k: v for k, v in data_overrides.items() if v is not None})
    return model.eval(), cfg


def _from_file(path: Path, trust: bool) -> tuple[nn.Module, DataConfig]:
    if not path.exists():
        raise DfqError(f"model file not found: {path}")
    model = load_model_file(path, trust)
    return model, DataConfig(num_classes=_head(model)[1] or 1000)


def _head(model: nn.Module) -> tuple[str | None, int | None]:
    """Name and width of the classifier: the last nn.Linear in module order."""
    last = (None, None)
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = (mod_name, mod.out_features)
    return last


def _checkpoint_classes(model: nn.Module, state: dict | None) -> int | None:
    """Number of classes of the checkpoint's head when it differs from the model's, else None."""
    name, width = _head(model)
    if state is None or name is None:
        return None
    w = state.get(f"{name}.weight")
    if w is None or w.ndim != 2 or w.shape[0] == width:
        return None
    return int(w.shape[0])


def _unknown(name: str, arch: str, sources: tuple[str, ...], prefix: str = "") -> str:
    close = suggest(arch, sources)
    hint = f"did you mean {prefix}{close}?" if close else "run `dfq models` to list the names"
    return f"unknown model '{name}'; {hint}"


def suggest(arch: str, sources: tuple[str, ...] = SEARCH_ORDER, cutoff: float = 0.6) -> str | None:
    """The loadable name closest to a mistyped `arch`, searching `sources` in order.

    dfq's zoo names are also compared without their dataset prefix ('resnt20' is closest to the
    'resnet20' of 'cifar10_resnet20'), and on equal similarity the earlier source wins, so a
    newcomer is pointed at dfq's own models before timm's thousand others ('resnet200').
    """
    best, best_score = None, cutoff
    for src in sources:
        for full in source_names(src):
            keys = (full, full.split("_", 1)[1]) if src == "dfq" and "_" in full else (full,)
            score = max(_similarity(arch, k, best_score) for k in keys)
            if score > best_score or (best is None and score >= best_score):
                best, best_score = full, score
    return best


def _similarity(a: str, b: str, floor: float) -> float:
    """difflib's ratio, skipping the full computation when the quick upper bounds fall short."""
    m = difflib.SequenceMatcher(None, a, b)
    if m.real_quick_ratio() < floor or m.quick_ratio() < floor:
        return 0.0
    return m.ratio()
