"""CRAIG: a weighted coreset by facility location on per-example gradients (Mirzasoleiman et al. 2020).

For the points of one class with gradients g_1..g_n, d_ij = ||g_i - g_j||^2 and s_ij = max(d) - d_ij >= 0.
Lazy greedy maximises the (optionally point-weighted) facility-location function

    F(S) = sum_i u_i max_{j in S} s_ij          (u_i = 1 unless ``point_weights`` is given)

up to the budget; the weight of a chosen j is the (u-weighted) number of points whose most similar chosen
element is j, so the weights sum to sum_i u_i (n by default) and sum_j w_j g_j approximates sum_i g_i.

Indices always refer to rows of the ``grads`` passed in. (The official code and CORDS read gradients in a
shuffled order and map positions back as if unshuffled, so their weights land on the wrong samples;
``tests/selection/test_selection.py`` checks that ours do not depend on the input order.)

Memory: the exact solver holds the n x n float32 distances, n^2 * 4 bytes (n = 6,000: 144 MB;
n = 20,000: 1.6 GB; n = 50,000: 10 GB), plus one ``chunk`` x n block while it is computed. Classes larger
than ``max_size`` are split at random into near-equal parts of at most ``max_size`` points, each solved
exactly with a budget proportional to its size (an approximation: no point is compared with points of
another part, and weights count within a part). A class under ``max_size`` whose distances still do not
fit (MemoryError, or CUDA out of memory) falls back to the same partitioning, halving the part size until
it fits, with a warning.

Ties in the greedy gains (e.g. two points that only cover each other gain exactly the same) and in the
nearest chosen element go to the lowest index; only through such ties does the result depend on the
order of the rows.

Time: computing the distances is one half n x n x d matrix product; lazy greedy re-evaluates only the
few candidates whose stale gains could still win. ``python benchmarks/selection_solver.py`` reports both
on 6,000 x 2,010 gradients (a few seconds on 2 CPU cores).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

_EVAL_BATCH = 16
"""How many stale candidates lazy greedy re-evaluates at once (one (16, n) block: cheap, vectorised)."""


def pairwise_sq_dists(grads: Tensor, chunk: int = 512) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``grads``.

    Args:
        grads: (n, d) float tensor on any device.
        chunk: rows per block; the temporary block is (chunk, n) float32 on ``grads``' device.

    Returns:
        (n, n) float32 numpy array on the CPU: ||g_i||^2 + ||g_j||^2 - 2 g_i.g_j clamped at 0, zero diagonal,
        exactly symmetric. Only blocks on or above the diagonal are computed (half the matmul work); the
        rest is mirrored block by block as each row block lands (small blocks keep the transposed copies
        in cache; ``benchmarks/selection_solver.py`` times the distances).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    g = grads.detach().float()
    # Distances do not change under a shift; centring shrinks the norms and with them the cancellation
    # error of ||a||^2 + ||b||^2 - 2ab in float32.
    g = g - g.mean(0, keepdim=True)
    sq = (g * g).sum(1)
    n = g.shape[0]
    out = np.empty((n, n), dtype=np.float32)
    full = torch.from_numpy(out)  # shares out's memory
    for i0 in range(0, n, chunk):
        i1 = min(i0 + chunk, n)
        blk = torch.addmm(sq[None, i0:], g[i0:i1], g[i0:].T, alpha=-2.0)
        blk.add_(sq[i0:i1, None]).clamp_(min=0)
        full[i0:i1, i0:].copy_(blk)  # (to the CPU if grads live elsewhere)
        # The diagonal block came from one product and need not be symmetric to the last bit: keep its
        # upper triangle and mirror it (greedy reads rows as columns, so symmetry must be exact).
        diag = full[i0:i1, i0:i1]
        diag.triu_()
        diag.add_(diag.triu(1).T)
        if i0:
            full[i0:i1, :i0].copy_(full[:i0, i0:i1].T)
    np.fill_diagonal(out, 0.0)
    return out


def similarity(grads: Tensor, chunk: int = 512) -> np.ndarray:
    """CRAIG's similarity s_ij = max(d) - d_ij, (n, n) float32 >= 0 (a reference; the solver works on d)."""
    s = pairwise_sq_dists(grads, chunk)
    np.subtract(s.max() if s.size else 0.0, s, out=s)
    return s


def _gains(dist: np.ndarray, rows: np.ndarray, cur: np.ndarray, u: np.ndarray | None) -> np.ndarray:
    """Marginal gains sum_i u_i max(cur_i - d_ji, 0) of candidates ``rows`` (dist is symmetric), as float64.

    With s = m - d, s_ij - max_{S} s_i. = min_{S} d_i. - d_ij: working on distances keeps float32's
    relative precision for small distances, which m - d would round away when m is large. Summed in
    float32 (``u`` float32): twice as fast, and gains only need to rank candidates."""
    diff = dist.take(rows, axis=0)  # (b, n) copy, then updated in place
    np.subtract(cur, diff, out=diff)
    np.maximum(diff, 0.0, out=diff)
    if u is not None:
        diff *= u  # a ufunc, not BLAS: numpy's BLAS threads would fight torch's for the cores
    return diff.sum(1).astype(np.float64)


def facility_location_greedy(dist: np.ndarray, budget: int,
                             point_weights: np.ndarray | None = None) -> np.ndarray:
    """Lazy greedy maximisation of F(S) = sum_i u_i max_{j in S} s_ij, s = max(dist) - dist, |S| <= budget.

    Picks, at every step, the candidate of largest marginal gain, ties to the lowest index: the same
    sequence as the naive greedy (which re-evaluates every candidate every step), but gains are only
    re-evaluated for candidates whose stale gain (an upper bound, by submodularity) could still win.
    Stale candidates are re-evaluated ``_EVAL_BATCH`` at a time as one vectorised block.

    Args:
        dist: (n, n) symmetric squared distances >= 0 with zero diagonal (float32), e.g. from
            ``pairwise_sq_dists``.
        budget: number of elements to choose, clipped to [0, n].
        point_weights: (n,) u_i >= 0 or None (all ones).

    Returns:
        (k,) int64 chosen indices in the order they were chosen.
    """
    n = dist.shape[0]
    k = max(0, min(int(budget), n))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    u = None if point_weights is None else np.asarray(point_weights, dtype=np.float32)
    m = float(dist.max())
    # cur_i = min_{j in S} d_ij, i.e. the similarity of S to i is m - cur_i; S empty counts as s = 0.
    cur = np.full(n, m, dtype=dist.dtype)
    # Gains with S empty: sum_i u_i (m - d_ij), in float64 from row sums (exact ordering at step 0).
    if u is None:
        ub = m * n - np.add.reduce(dist, axis=1, dtype=np.float64)
    else:
        uu = u.astype(np.float64)
        ub = np.concatenate([m * uu.sum() - (dist[i:i + 1024] * uu).sum(1) for i in range(0, n, 1024)])
    fresh_at = np.zeros(n, dtype=np.int64)
    order = np.empty(k, dtype=np.int64)
    batch = min(_EVAL_BATCH, n)
    for t in range(k):
        while True:
            best = int(np.argmax(ub))  # largest bound, lowest index (argmax returns the first maximum)
            if fresh_at[best] == t:
                break
            top = np.argpartition(ub, n - batch)[n - batch:]
            if not (top == best).any():  # ties at the maximum may leave it out
                top = np.append(top, best)
            top = top[(fresh_at[top] != t) & np.isfinite(ub[top])]
            ub[top] = _gains(dist, top, cur, u)
            fresh_at[top] = t
        order[t] = best
        np.minimum(cur, dist[best], out=cur)
        ub[best] = -np.inf
        fresh_at[best] = -1
        # All other bounds are stale from the next step on (fresh_at != t + 1).
    return order


def assign_weights(dist: np.ndarray, chosen: np.ndarray, point_weights: np.ndarray | None = None) -> np.ndarray:
    """Weight of each chosen j: the total u of the points whose most similar (nearest) chosen element is j.

    Ties go to the lowest index; a chosen point always represents itself (d_jj = 0, so this only settles
    ties between exact duplicates), so every weight is >= its own u_j.

    Args:
        dist: (n, n) squared distances; chosen: (k,) distinct indices; point_weights: (n,) or None.

    Returns:
        (k,) float64 weights aligned with ``chosen``; they sum to sum_i u_i.
    """
    n = dist.shape[0]
    chosen = np.asarray(chosen, dtype=np.int64)
    k = chosen.size
    if k == 0:
        return np.empty(0, dtype=np.float64)
    rank = np.argsort(chosen, kind="stable")
    sorted_chosen = chosen[rank]
    # torch's argmin returns the first minimum (lowest index among ties), as numpy's does, and is faster
    # than numpy's axis-0 argmin over the (k, n) block.
    nearest = torch.from_numpy(dist)[torch.from_numpy(sorted_chosen)].argmin(0).numpy()
    nearest[sorted_chosen] = np.arange(k)
    u = np.ones(n) if point_weights is None else np.asarray(point_weights, dtype=np.float64)
    w_sorted = np.bincount(nearest, weights=u, minlength=k)
    w = np.empty(k, dtype=np.float64)
    w[rank] = w_sorted
    return w


def _proportional_split(total: int, sizes: list[int]) -> list[int]:
    """Integers summing to ``total``, proportional to ``sizes`` (largest remainder), each <= its size."""
    n = sum(sizes)
    raw = [total * s / n for s in sizes]
    out = [min(math.floor(r), s) for r, s in zip(raw, sizes, strict=True)]
    rest = total - sum(out)
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(raw[i] - math.floor(raw[i])), i))
    while rest > 0:
        progressed = False
        for i in by_remainder:
            if rest > 0 and out[i] < sizes[i]:
                out[i] += 1
                rest -= 1
                progressed = True
        if not progressed:
            break
    return out


def craig(grads: Tensor, budget: int, *, chunk: int = 512, max_size: int = 20000,
          generator: torch.Generator | None = None,
          point_weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """CRAIG coreset of the rows of ``grads``.

    Args:
        grads: (n, d) per-example gradients (any float dtype, any device).
        budget: coreset size k; 0 -> empty; >= n -> every point with weight u_i (1 by default).
        chunk: rows per block of the distance computation (bounds the temporary memory to chunk * n * 4 B).
        max_size: largest n solved exactly (n^2 * 4 bytes of distances). Larger inputs are partitioned
            at random (``generator``) into parts of <= max_size points, each with a proportional budget.
        generator: randomness for the partition only (None: a generator seeded with 0).
        point_weights: (n,) non-negative weights u_i of the points (e.g. batch sizes for batch-wise
            selection) or None for all ones.

    Returns:
        indices: (k,) int64 rows of ``grads`` in the order greedy chose them (on ``grads``' device).
        weights: (k,) float32, aligned with ``indices``, each >= its own u_j (so > 0 for positive u); they
            sum to sum_i u_i (n by default).
    """
    if grads.dim() != 2:
        raise ValueError(f"grads must be (n, d), got shape {tuple(grads.shape)}")
    n = grads.shape[0]
    dev = grads.device
    if point_weights is not None:
        if point_weights.shape != (n,):
            raise ValueError(f"point_weights must have shape ({n},), got {tuple(point_weights.shape)}")
        if bool((point_weights < 0).any()):
            raise ValueError("point_weights must be >= 0")
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    k = max(0, min(int(budget), n))
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=dev), torch.empty(0, dtype=torch.float32, device=dev)
    if k == n:
        w = torch.ones(n) if point_weights is None else point_weights.detach().float().cpu()
        return torch.arange(n, device=dev), w.to(dev)
    if n > max_size:
        return _craig_partitioned(grads, k, chunk, max_size, generator, point_weights)
    u = None if point_weights is None else point_weights.detach().double().cpu().numpy()
    try:
        dist = pairwise_sq_dists(grads, chunk)
    except (MemoryError, torch.OutOfMemoryError):
        if n < 2:
            raise
        # Below max_size but still too big for this machine: halve the parts until they fit.
        warnings.warn(f"CRAIG: the {n} x {n} distances of a class do not fit in memory; solving it in parts of "
                      f"{n // 2} points (partitioned greedy). Lower selection.max_class_size to choose the size.",
                      RuntimeWarning, stacklevel=2)
        return _craig_partitioned(grads, k, chunk, n // 2, generator, point_weights)
    order = facility_location_greedy(dist, k, u)
    weights = assign_weights(dist, order, u)
    return torch.from_numpy(order).to(dev), torch.from_numpy(weights).float().to(dev)


def _craig_partitioned(grads: Tensor, k: int, chunk: int, max_size: int, generator: torch.Generator | None,
                       point_weights: Tensor | None) -> tuple[Tensor, Tensor]:
    n = grads.shape[0]
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=gen, device=gen.device).to(grads.device)
    n_parts = math.ceil(n / max_size)
    parts = list(torch.tensor_split(perm, n_parts))
    budgets = _proportional_split(k, [p.numel() for p in parts])
    idx, wts = [], []
    for part, kb in zip(parts, budgets, strict=True):
        pw = None if point_weights is None else point_weights[part.to(point_weights.device)]
        i, w = craig(grads[part], kb, chunk=chunk, max_size=max_size, point_weights=pw)
        idx.append(part[i])
        wts.append(w)
    return torch.cat(idx), torch.cat(wts)
