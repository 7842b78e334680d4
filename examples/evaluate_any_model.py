"""Evaluate any classifier with PGD and standard AutoAttack: ``advcoreset.evaluation.evaluate`` takes an
nn.Module mapping (B, C, H, W) in [0, 1] to logits and (N, C, H, W) images with (N,) labels.

    python examples/evaluate_any_model.py --weights my_model.pt --n 200

Without ``--weights`` it first trains the example network for a few clean epochs (a stand-in for yours).
``--weights`` is read with ``weights_only=True``: a state dict, never pickled code.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from advcoreset.evaluation import AutoAttackBudgets, evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="state dict of the example network (torch.save)")
    ap.add_argument("--n", type=int, default=200, help="test images attacked")
    ap.add_argument("--eps", type=float, default=0.1, help="l_inf radius in [0, 1] pixels")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny AutoAttack budgets (a few steps; the result says they are not standard)")
    args = ap.parse_args()
    torch.manual_seed(0)
    d = load_digits()
    x, y = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(d.target)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    if args.weights:
        model.load_state_dict(torch.load(args.weights, weights_only=True))
    else:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(300):
            i = torch.randint(0, 1400, (64,))
            opt.zero_grad()
            F.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    model.eval()
    res = evaluate(model, x[1400:1400 + args.n], y[1400:1400 + args.n], norm="linf", eps=args.eps, pgd_steps=20,
                   pgd_alpha=None, autoattack=True, aa_version="standard",
                   aa_budgets=AutoAttackBudgets(3, 3, 1, 3, 30) if args.smoke else None)
    print(json.dumps({k: res[k] for k in ("n", "clean_acc", "pgd20_acc", "autoattack_acc")}
                     | {"comparable_to_robustbench": res["autoattack"]["comparable_to_robustbench"]}))


if __name__ == "__main__":
    main()
