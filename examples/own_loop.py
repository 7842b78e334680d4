"""Your own training loop with ``advcoreset.CoresetLoader``: it picks the weighted adversarial coreset, re-picks
it on schedule, and hands you (x, y, w) batches; everything else is ordinary PyTorch.

    python examples/own_loop.py --epochs 6
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from advcoreset import CoresetLoader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--n", type=int, default=1400, help="training images")
    args = ap.parse_args()
    torch.manual_seed(0)
    d = load_digits()
    x, y = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(d.target)
    train = TensorDataset(x[:args.n], y[:args.n])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    loader = CoresetLoader(train, model, "pgd", method="gradmatch", fraction=0.3, warm_epochs=1, interval=2,
                           batch_size=64, objective_options={"eps": 0.1, "alpha": 0.03, "steps": 3})
    for epoch in range(args.epochs):
        seen = 0
        for xb, yb, w in loader:  # all data while warm, then the current coreset
            x_adv = loader.objective.attack(model, xb, yb)
            loss = (w * F.cross_entropy(model(x_adv), yb, reduction="none")).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(yb)
        stats = loader.stats or {}  # the last selection's: grad_error, attack / solver seconds, sizes
        print(json.dumps({"epoch": epoch + 1, "trained_on": seen, "grad_error": stats.get("grad_error")}))

    with torch.no_grad():
        acc = (model(x[1400:]).argmax(1) == y[1400:]).float().mean().item()
    print(json.dumps({"test_clean_acc": acc, "coreset_size": int(loader.selection.indices.numel())}))


if __name__ == "__main__":
    main()
