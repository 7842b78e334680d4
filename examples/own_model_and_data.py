"""Your own model and your own Dataset through ``advcoreset.train``: PGD adversarial training on a CRAIG
coreset, re-chosen every 2 epochs after one warm epoch.

    python examples/own_model_and_data.py --epochs 6 --out runs/example-own

The data are scikit-learn's bundled 8x8 digits (nothing is downloaded), served by a plain map-style Dataset
of (float image (1, 8, 8) in [0, 1], int label): any such Dataset works, any channel count and image size.
"""

from __future__ import annotations

import argparse
import json

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset

import advcoreset


class Digits(Dataset):
    """The digits as (1, 8, 8) float images in [0, 1]; ``train`` picks the first 1,400, else the rest."""

    def __init__(self, train: bool, n: int | None = None) -> None:
        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
        y = torch.tensor(d.target)
        sl = slice(0, 1400) if train else slice(1400, None)
        self.x, self.y = x[sl][:n], y[sl][:n]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--n", type=int, default=None, help="training images (default all 1,400)")
    ap.add_argument("--out", default="runs/example-own")
    args = ap.parse_args()

    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))
    config = {"objective": {"name": "pgd", "attack": {"eps": 0.1, "alpha": 0.03, "steps": 3}},
              "selection": {"method": "craig", "fraction": 0.3, "warm_epochs": 1, "interval": 2},
              "optim": {"name": "adamw", "lr": 3e-3, "epochs": args.epochs, "batch_size": 64},
              "eval": {"every": 0, "pgd_steps": 10}, "device": "cpu", "progress": "line", "out_dir": args.out}
    results = advcoreset.train(config, model=model, train_set=Digits(True, args.n), test_set=Digits(False))
    print(json.dumps({k: v for k, v in results.items() if k.startswith("test_") and k.endswith("_acc")}))


if __name__ == "__main__":
    main()
