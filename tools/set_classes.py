"""Which classes the FP model sees in synthetic sets: its argmax histogram per set (data-free).

A synthesizer whose generator is unconditional (RDSKD, DFAD) can drop classes; this counts, for
each set, the images the FP model assigns to each class and the classes it never assigns. It reads
no real image, so a recipe may be chosen on it.

    python tools/set_classes.py --model cifar10_resnet20 \\
        --weights ../shared/models/cifar10-resnet20.th runs/methods/r20-rdskd-s1.npz ...
"""

from __future__ import annotations

import argparse
import json

import torch

from dfq.calibration.formats import load_calibration
from dfq.models import load_model


@torch.no_grad()
def class_counts(model: torch.nn.Module, images: torch.Tensor, num_classes: int) -> list[int]:
    preds = torch.cat([model(x).argmax(1) for x in images.split(256)])
    return torch.bincount(preds, minlength=num_classes).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights", default=None)
    ap.add_argument(
        "sets", nargs="+", help="sets written by dfq synthesize, or tools/bench_quant.py's .pt"
    )
    args = ap.parse_args()
    model, dc = load_model(args.model, weights=args.weights)
    model.eval()
    for path in args.sets:
        images = (
            torch.load(path, weights_only=True).float()
            if path.endswith(".pt")
            else load_calibration(path).images
        )
        counts = class_counts(model, images, dc.num_classes)
        missing = [c for c, n in enumerate(counts) if n == 0]
        row = {"set": path, "classes": dc.num_classes - len(missing), "missing": missing[:50]}
        if dc.num_classes <= 20:
            row["counts"] = counts
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
