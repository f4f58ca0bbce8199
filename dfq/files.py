"""Files written so that an interrupt never leaves a half-written file under its final name.

Every writer builds its output under a temporary name beside the target and renames it at the end;
an existing target is refused unless `overwrite`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from dfq.errors import DfqError


@contextmanager
def atomic_path(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write a file or directory to; it becomes `final` on success."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise DfqError(f"{final} already exists; choose another --out or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        _remove(trash)
        os.replace(final, trash)
        os.replace(tmp, final)
        _remove(trash)
    else:
        os.replace(tmp, final)


def remove_path(p: Path) -> None:
    """Remove a file or a directory tree, if there is one."""
    _remove(Path(p))


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def write_json(data: dict, path: str | Path, overwrite: bool = True) -> None:
    """A JSON file written atomically (reports, sidecars)."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def write_yaml(data: dict[str, Any], path: str | Path, overwrite: bool = True) -> None:
    """A YAML file (resolved recipes) written atomically, keys in insertion order."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
