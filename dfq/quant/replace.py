"""The one module walker: replace the modules that match a filter, by qualified name.

Like torchao's `_replace_with_custom_fn_if_matches_filter`; every swap in dfq (BN folding, inserting
quantized layers, restoring float layers) goes through `replace_modules`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Filter = Callable[[str, nn.Module], bool]
Make = Callable[[str, nn.Module], nn.Module]


def replace_modules(model: nn.Module, matches: Filter, make: Make, prefix: str = "") -> list[str]:
    """Replace, depth first, each submodule for which `matches(name, module)`; returns the names.

    A replaced module's children are not visited. The root itself is never replaced.
    """
    done = []
    for child_name, child in list(model.named_children()):
        name = f"{prefix}.{child_name}" if prefix else child_name
        if matches(name, child):
            setattr(model, child_name, make(name, child))
            done.append(name)
        else:
            done += replace_modules(child, matches, make, name)
    return done
