"""Train a torchvision ResNet-18 with a 10-class head on real CIFAR-10 images at 32x32 (issue 7).

This stands in for the user who fine-tuned a torchvision backbone on their own classes at another
resolution. It measures its own test accuracy with its own loop (independent of dfq's evaluate), so
`dfq evaluate torchvision:resnet18 --weights OUT --input-size 32 --data TEST` can be checked against
it.

    python tools/train_cifar_head.py --out runs/r18_cifar10.pth --epochs 15
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - MEAN) / STD


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random crop with 4-pixel padding and horizontal flip, per batch."""
    n = len(x)
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    i, j = np.random.randint(0, 9, 2)
    x = padded[:, :, i : i + 32, j : j + 32]
    flip = torch.rand(n) < 0.5
    x[flip] = x[flip].flip(3)
    return x


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        int((model(normalize(x[i : i + 500])).argmax(1) == y[i : i + 500]).sum())
        for i in range(0, len(x), 500)
    )
    return 100.0 * correct / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default=str(SHARED / "cifar10-train-jpeg-5k.npz"))
    ap.add_argument("--test", default=str(SHARED / "cifar10-test-jpeg.npz"))
    ap.add_argument("--out", default="runs/r18_cifar10.pth")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    tr, te = np.load(args.train), np.load(args.test)
    xtr, ytr = torch.from_numpy(tr["x"]), torch.from_numpy(tr["y"]).long()
    xte, yte = torch.from_numpy(te["x"]), torch.from_numpy(te["y"]).long()
    model = torchvision.models.resnet18(num_classes=10)
    steps = args.epochs * ((len(xtr) + args.batch_size - 1) // args.batch_size)
    opt = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), args.batch_size):
            idx = perm[i : i + args.batch_size]
            loss = F.cross_entropy(model(normalize(augment(xtr[idx]))), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} "
            f"{time.perf_counter() - start:.0f}s",
            flush=True,
        )
    top1 = accuracy(model, xte, yte)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    result = {
        "top1": round(top1, 2),
        "n": len(xte),
        "epochs": args.epochs,
        "train_seconds": round(time.perf_counter() - start, 1),
        "weights": str(out),
    }
    print(json.dumps(result))
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
