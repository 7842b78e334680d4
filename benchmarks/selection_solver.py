"""Solver wall-clock and gradient-approximation error of CRAIG, GradMatch and random for one class.

    python benchmarks/selection_solver.py                 # n = 6000, d = 2010, fractions 0.1 0.3 0.5
    python benchmarks/selection_solver.py --n 2000 --fractions 0.1 0.3 --json out.json
    python benchmarks/selection_solver.py --threads 1 --load 2     # 1 solver thread beside 2 busy processes
    python benchmarks/selection_solver.py --lam 1e-3 --lam-relative   # the ridge relative to the gradients

The gradients have the form of real last-layer gradients of one class (label y = 0, 10 classes, F = 200
features, so d = 10 + 10 * 200 = 2010): g_i = [delta_i, delta_i (x) h_i] with delta_i = softmax(W h_i) - e_y,
features h_i = relu(centre of cluster + noise) drawn from 20 clusters of unequal size, and a random
linear head W. Most points are confidently classified (small delta), a few are not (large delta): the
spread that makes the choice of coreset matter. Timings are the solver alone (the trainer's
``time_selection_solver``), CPU, with the thread count torch reports.

err = ||sum_i g_i - sum_j w_j g_j|| / ||sum_i g_i|| (``approximation_error``, the quantity in ACS's bound);
angle = the angle between the two sums (what is left after the trainer's loss sum_j w_j l_j / sum_j w_j
divides by the total weight); sum w / n = the effective learning-rate factor of that normalisation.
Random uses weight n / k and is averaged over 5 draws.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import torch
from torch import Tensor

from advcoreset.selection import approximation_error, craig, gradmatch_solve, ridge

_BUSY = "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\nwhile True:\n    a = torch.tanh(a @ a)\n"


def last_layer_like_grads(n: int, features: int = 200, classes: int = 10, clusters: int = 20,
                          seed: int = 0) -> Tensor:
    """(n, classes * (1 + features)) float32 gradients [delta, delta (x) h] of one class (label 0)."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.empty(clusters).exponential_(generator=g)  # Dirichlet(1) proportions, unnormalised
    cid = torch.multinomial(sizes, n, replacement=True, generator=g)
    centres = torch.randn(clusters, features, generator=g)
    h = torch.relu(centres[cid] + 0.7 * torch.randn(n, features, generator=g))
    z = h @ (0.15 * torch.randn(classes, features, generator=g)).T
    # Per-cluster margins for the true class: some clusters easy (p_0 near 1), some mostly misclassified.
    z[:, 0] += (3.0 + 2.0 * torch.randn(clusters, generator=g))[cid] + torch.randn(n, generator=g)
    delta = torch.softmax(z, dim=1)
    delta[:, 0] -= 1.0
    return torch.cat([delta, (delta.unsqueeze(2) * h.unsqueeze(1)).flatten(1)], 1)


def angle_deg(grads: Tensor, indices: Tensor, weights: Tensor) -> float:
    """Angle in degrees between sum_i g_i and sum_j w_j g_j: the error left once the trainer divides the
    loss by the total weight (which rescales, so only the direction counts, at an LR scaled by n / sum w)."""
    g = grads.double()
    full = g.sum(0)
    approx = (weights.double().unsqueeze(1) * g[indices]).sum(0)
    cos = float(full @ approx / (full.norm() * approx.norm()).clamp_min(1e-300))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--features", type=int, default=200, help="d = 10 * (1 + features)")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--tol", type=float, default=0.0, help="GradMatch tol (default 0, the library default)")
    ap.add_argument("--lam-relative", action="store_true", help="lam times the mean squared gradient norm")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the solvers (default torch's)")
    ap.add_argument("--load", type=int, default=0,
                    help="busy 1-thread processes running beside the solvers (a loaded machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=str, default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    busy = [subprocess.Popen([sys.executable, "-c", _BUSY]) for _ in range(args.load)]
    try:
        run(args)
    finally:
        for p in busy:
            p.kill()


def run(args: argparse.Namespace) -> None:
    grads = last_layer_like_grads(args.n, args.features, seed=args.seed)
    lam = ridge(grads, args.lam, args.lam_relative)
    n, d = grads.shape
    print(f"one class: n = {n}, d = {d}, torch threads = {torch.get_num_threads()}, "
          f"busy processes beside = {args.load}, GradMatch lam = {lam:.4g}"
          f"{f' ({args.lam} relative)' if args.lam_relative else ''}, tol = {args.tol}")
    rows = []
    header = (f"{'frac':>5} {'budget':>6} | {'craig s':>7} {'gm s':>6} | {'err craig':>9} {'gm':>7} "
              f"{'random':>7} | {'angle craig':>11} {'gm':>5} {'random':>6} | {'gm sum w/n':>10} {'filled':>6}")
    print(header)
    print("-" * len(header))
    for frac in args.fractions:
        k = max(1, round(frac * n))
        t0 = time.perf_counter()
        ci, cw = craig(grads, k)
        t_craig = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = gradmatch_solve(grads, k, lam=lam, tol=args.tol, generator=torch.Generator().manual_seed(0))
        t_gm = time.perf_counter() - t0
        rand_err, rand_ang = [], []
        for s in range(5):
            ri = torch.randperm(n, generator=torch.Generator().manual_seed(s))[:k]
            rw = torch.full((k,), n / k)
            rand_err.append(approximation_error(grads, ri, rw))
            rand_ang.append(angle_deg(grads, ri, rw))
        row = {"n": n, "d": d, "fraction": frac, "budget": k, "craig_seconds": t_craig,
               "gradmatch_seconds": t_gm, "err_craig": approximation_error(grads, ci, cw),
               "err_gradmatch": approximation_error(grads, res.indices, res.weights),
               "err_random": sum(rand_err) / 5, "angle_craig": angle_deg(grads, ci, cw),
               "angle_gradmatch": angle_deg(grads, res.indices, res.weights),
               "angle_random": sum(rand_ang) / 5, "gradmatch_weight_sum_over_n": float(res.weights.sum()) / n,
               "gradmatch_residual": res.residual,
               "gradmatch_filled": res.n_filled, "gradmatch_steps": res.steps,
               "threads": torch.get_num_threads(), "load": args.load, "lam": lam,
               "lam_relative": args.lam_relative}
        rows.append(row)
        print(f"{frac:>5.2f} {k:>6d} | {t_craig:>7.2f} {t_gm:>6.2f} | {row['err_craig']:>9.4f} "
              f"{row['err_gradmatch']:>7.4f} {row['err_random']:>7.4f} | {row['angle_craig']:>11.2f} "
              f"{row['angle_gradmatch']:>5.2f} {row['angle_random']:>6.2f} | "
              f"{row['gradmatch_weight_sum_over_n']:>10.3f} {res.n_filled:>6d}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
