"""Adversarial coreset training under PyTorch Lightning: the ``CoresetLoader`` is the module's training
data, ``CoresetCallback`` keeps it on Lightning's epochs and in its checkpoints.

    python examples/lightning_coreset.py --epochs 4
"""

from __future__ import annotations

import argparse
import json

import lightning
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from advcoreset import CoresetLoader
from advcoreset.coreset.lightning import CoresetCallback


class RobustClassifier(lightning.LightningModule):
    def __init__(self, loader_args: dict) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        self.loader = CoresetLoader(model=self.net, **loader_args)
        self.batches: list[int] = []

    def train_dataloader(self) -> CoresetLoader:
        return self.loader

    def on_train_epoch_start(self) -> None:
        self.batches.append(0)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, w = batch
        x_adv = self.loader.objective.attack(self.net, x, y)
        self.batches[-1] += 1
        return (w * F.cross_entropy(self.net(x_adv), y, reduction="none")).sum() / w.sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n", type=int, default=1400, help="training images")
    ap.add_argument("--limit-batches", type=int, default=None, help="Lightning's limit_train_batches")
    args = ap.parse_args()
    torch.manual_seed(0)
    d = load_digits()
    x, y = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(d.target)
    module = RobustClassifier({"dataset": TensorDataset(x[:args.n], y[:args.n]), "objective": "pgd",
                               "method": "gradmatch", "fraction": 0.3, "warm_epochs": 1, "interval": 2,
                               "batch_size": 64, "objective_options": {"eps": 0.1, "alpha": 0.03, "steps": 3}})
    trainer = lightning.Trainer(max_epochs=args.epochs, reload_dataloaders_every_n_epochs=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                limit_train_batches=args.limit_batches, callbacks=[CoresetCallback(module.loader)])
    trainer.fit(module)
    for epoch, n in enumerate(module.batches):
        print(json.dumps({"epoch": epoch + 1, "batches": n}))
    stats = module.loader.stats or {}
    print(json.dumps({"selections_at": stats.get("epoch"), "coreset_size": stats.get("coreset_size"),
                      "loader_epoch": module.loader.epoch}))


if __name__ == "__main__":
    main()
