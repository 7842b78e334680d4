"""PGD-AT throughput: advcoreset's training loop vs a bare hand-written PGD loop, same model and batch.

    python benchmarks/throughput.py [--n 6400] [--steps 7] [--repeats 3] [--device cpu]

Both loops see the same images (Fashion-MNIST train subset), the same small CNN and batch size, PGD-k
l_inf with random start, SGD with momentum. The bare loop is what one writes by hand: index a batch,
k sign steps on the input, one SGD step. Prints images/second (best of ``repeats``) and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from advcoreset.config_checks import load_config
from advcoreset.training import Trainer


def bare_loop(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, eps: float,
              alpha: float, steps: int, lr: float) -> float:
    """One epoch of hand-written PGD-AT; returns seconds."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    n = labels.numel()
    t0 = time.perf_counter()
    perm = torch.randperm(n, device=images.device)
    for s in range(0, n, batch_size):
        idx = perm[s:s + batch_size]
        x = images[idx].float() / 255
        y = labels[idx]
        model.eval()
        delta = torch.empty_like(x).uniform_(-eps, eps)
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            (g,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        model.train()
        loss = F.cross_entropy(model(x + delta), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6400, help="training images per timed epoch")
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="small_cnn")
    args = ap.parse_args()
    cfg = load_config(None, [f"data.train_subset={args.n}", "data.augment=none", f"model.name={args.model}",
                             f"objective.attack.steps={args.steps}", f"optim.batch_size={args.batch_size}",
                             "optim.schedule=constant", "optim.lr=0.01", f"device={args.device}", "progress=none",
                             "out_dir=/tmp/advcoreset-throughput", "selection.method=full"])
    trainer = Trainer(cfg)
    n = trainer.labels.numel()
    a = cfg.objective.attack
    idx = torch.arange(n, device=trainer.device)
    ones = torch.ones(n, device=trainer.device)
    ours, bare = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        t0 = time.perf_counter()
        trainer.train_epoch(idx, ones)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        ours.append(time.perf_counter() - t0)
        bare.append(bare_loop(trainer.model, trainer.images, trainer.labels, args.batch_size, a.eps, a.alpha,
                              a.steps, 0.01))
    r_ours, r_bare = n / min(ours), n / min(bare)
    print(f"PGD-{args.steps} adversarial training, {args.model}, batch {args.batch_size}, {n} images, "
          f"device {trainer.device}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print("| loop | images/s |")
    print("|---|---|")
    print(f"| advcoreset Trainer.train_epoch | {r_ours:.0f} |")
    print(f"| bare hand-written PGD loop | {r_bare:.0f} |")
    print(f"| ratio (ours / bare) | {r_ours / r_bare:.3f} |")


if __name__ == "__main__":
    main()
