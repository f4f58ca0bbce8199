"""Pretrained weights through torch.hub's and Hugging Face's normal caches, failing fast offline.

Offline machines are common where dfq runs (the model's data is private, so is the network). When
weights are not cached and cannot be downloaded, the error names the cache path the file would go to
and the `--weights` alternative, instead of retrying for a minute.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from dfq.errors import DfqError


def cached_url(url: str, model_name: str) -> Path:
    """Return torch.hub's cached copy of `url`, downloading it first if the network allows."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=False)
    except Exception as e:  # URLError, HTTPError, socket errors
        tmp.unlink(missing_ok=True)
        raise _offline_error(model_name, path, url, e) from None
    tmp.replace(path)
    return path


def cached_hf_file(repo_id: str, model_name: str) -> str | None:
    """Path of a cached timm checkpoint for `repo_id`, or None after checking the hub is
    reachable."""
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo_id, filename)
        if isinstance(hit, str):
            return hit
    if not host_reachable(urlparse(constants.ENDPOINT).hostname or "huggingface.co"):
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        raise _offline_error(model_name, folder, f"hf-hub:{repo_id}", "no network")
    return None


def host_reachable(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _offline_error(model_name: str, path: Path, url: str, reason: object) -> DfqError:
    return DfqError(
        f"pretrained weights for '{model_name}' are not cached at {path} "
        "and could not be downloaded "
        f"({reason}); copy them there from {url}, or pass --weights PATH (or --no-pretrained for "
        "random weights)"
    )
