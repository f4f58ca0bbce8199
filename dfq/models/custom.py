"""The user's own models: `package.module:factory` callables and (trusted) whole-model files."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from dfq.errors import DfqError

TRUST_HINT = (
    "loading it runs code stored in the file, so dfq does it only with --trust-checkpoint; "
    "pass that "
    "flag if you trust where the file came from, or save a state dict and use --weights"
)


def build_from_factory(spec: str, num_classes: int | None) -> nn.Module:
    """Import `module:callable` (from the current directory or the environment) and call it."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise DfqError(f"custom model '{spec}' must look like package.module:factory")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module's own errors while importing
        raise DfqError(
            f"model '{spec}': '{module_name}' is not a model source (dfq, torchvision, timm) and "
            f"cannot import '{module_name}' as a module ({type(e).__name__}: {e})"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise DfqError(f"custom model '{spec}': '{module_name}' has no callable '{attr}'")
    kwargs = {}
    if num_classes is not None and "num_classes" in _parameters(factory):
        kwargs["num_classes"] = num_classes
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise DfqError(
            f"custom model '{spec}': calling {attr}() failed ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(model, nn.Module):
        raise DfqError(
            f"custom model '{spec}': {attr}() returned a {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    return model


def load_model_file(path: Path, trust: bool) -> nn.Module:
    """A TorchScript file or a whole pickled nn.Module, only when the user trusts it."""
    if not trust:
        raise DfqError(
            f"{path} is a whole-model file (TorchScript or pickled module); {TRUST_HINT}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", FutureWarning
            )  # jit is deprecated but still what users have
            return torch.jit.load(str(path), map_location="cpu")
    except Exception:
        pass
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise DfqError(
            f"{path} is neither TorchScript nor a pickled model ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(obj, nn.Module):
        raise DfqError(
            f"{path} holds a {type(obj).__name__}, not a torch.nn.Module; "
            "use --weights for a state dict"
        )
    return obj


def looks_like_file(name: str) -> bool:
    return name.endswith((".pt", ".pth", ".pkl", ".ts", ".jit")) or Path(name).is_file()


def _parameters(fn) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()
