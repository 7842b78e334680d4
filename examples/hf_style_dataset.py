"""A Hugging Face ``datasets``-style training set (dict items ``{"image": PIL image, "label": int}``) with
``CoresetLoader(..., keys=("image", "label"))``, read by DataLoader workers, in a loop of one's own.

    python examples/hf_style_dataset.py --epochs 6 --workers 2

A ``datasets.Dataset`` (``load_dataset("cifar10", split="train")``, keys ``("img", "label")``) is read the same
way; nothing is downloaded here: the items are scikit-learn's digits as 8 x 8 greyscale PIL images.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset

from advcoreset import CoresetLoader


class DictDigits(Dataset):
    """Dict items, as a Hugging Face dataset gives them: a PIL image and an int label per example."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        pixels = (images * 255 / 16).astype(np.uint8)  # digits are 0..16
        self.items = [{"image": Image.fromarray(p), "label": int(c)} for p, c in zip(pixels, labels, strict=True)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--n", type=int, default=1400, help="training images")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    args = ap.parse_args()
    torch.manual_seed(0)
    d = load_digits()
    train, test = DictDigits(d.images[:args.n], d.target[:args.n]), DictDigits(d.images[1400:], d.target[1400:])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    loader = CoresetLoader(train, model, "pgd", keys=("image", "label"), method="gradmatch", fraction=0.3,
                           warm_epochs=1, interval=2, batch_size=64, num_workers=args.workers,
                           persistent_workers=args.workers > 0,  # any DataLoader argument passes through
                           objective_options={"eps": 0.1, "alpha": 0.03, "steps": 3})
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)  # as on a DistributedSampler: the schedule follows the loop's epoch
        seen = 0
        for x, y, w in loader:  # (x, y) collated by the DataLoader, w from the coreset's sampler
            x_adv = loader.objective.attack(model, x, y)
            loss = (w * F.cross_entropy(model(x_adv), y, reduction="none")).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        stats = loader.stats or {}
        print(json.dumps({"epoch": epoch + 1, "trained_on": seen, "grad_error": stats.get("grad_error")}))

    x_test = torch.stack([torch.from_numpy(np.array(it["image"])) for it in test.items]).unsqueeze(1) / 255
    y_test = torch.tensor([it["label"] for it in test.items])
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(json.dumps({"test_clean_acc": acc, "coreset_size": int(loader.selection.indices.numel()),
                      "workers": loader.dataloader.num_workers}))


if __name__ == "__main__":
    main()
