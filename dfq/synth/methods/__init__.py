"""The synthesis methods; importing this package registers every one of them."""

from __future__ import annotations

from dfq.synth.methods import bn, dfad, rdskd, rgal  # noqa: F401
