"""GradMatch: a weighted coreset by non-negative orthogonal matching pursuit (Killamsetty et al. 2021).

For one class, the columns of A are the per-example gradients a_j = g_j (d,) and the target is
b = sum_i g_i. Starting from an empty support S:

1. r = b - A_S x; stop when ||r|| / ||b|| < tol (default 0: never) or the support holds ``budget`` atoms;
2. add j = argmax_{j not in S} <a_j, r>, positive correlations only (none left: stop); for budgets of
   512 and more the m best join at once (generalised OMP, m = budget // 64; ``atoms_per_step``), which
   shares one correlation pass, one Gram product and one block Cholesky append among m atoms;
3. x = argmin_{x >= 0} ||A_S x - b||^2 + lam ||x||^2 (a true NNLS, not the official "drop the most
   negative atom and re-solve"); atoms whose coefficient reaches 0 leave the support (they may be
   picked again later). A new atom sits at x = 0 when it joins; if its unconstrained optimum is <= 0 it
   leaves at once and is not tried again, without holding back the other atoms of its batch.

If it stops before the budget (tol reached, or no atom left with a positive correlation), the rest is
filled at random (``generator``). The reference code gives the
fill weight 1, which adds sum_fill g ~ (m/n) b to a support that already matches b. Here the solver's
weights scale by alpha and the fill shares one weight beta, (alpha, beta) = argmin
||alpha A_S x + beta sum_fill g - b|| with alpha >= 0 and beta >= ``FILL_FLOOR`` x the mean solver weight
(weights stay > 0), so the fill never undoes the match (with weight 1 it put GradMatch's error at
fraction 0.5 above random's in ``benchmarks/selection_overhead.py``). Without a fill the weights on the
solver's atoms equal the ridge NNLS solution on the returned support.

The NNLS is Lawson-Hanson's active-set method on the Gram form H = A_S^T A_S + lam I, q = A_S^T b,
warm-started from the previous solution: the m atoms of a step cost one block Cholesky append (a
p x d x m product in float64 and one p x p x m triangular solve, BLAS 3), a leaving atom one rank-one
update in closed form (O(p^2), vectorised; see ``cholesky.Cholesky``). The correlations <a_j, r> for all n atoms
are one (n, d) float32 matrix-vector product per step on ``grads``' device.
``python benchmarks/selection_solver.py`` times the solver; ``benchmarks/selection_overhead.py`` its share
of a selection round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from advcoreset.selection.cholesky import Cholesky

_COS_EPS = 1e-6
"""An atom counts as positively correlated when <a_j, r> > _COS_EPS * ||a_j|| ||r|| (float32 noise floor)."""


@dataclass
class GradMatchResult:
    indices: Tensor
    """(k,) int64 rows of ``grads``: the solver's support in the order it stands, then the random fill."""
    weights: Tensor
    """(k,) float32 > 0: the NNLS coefficients scaled by alpha, then the fill's one shared weight beta (see
    ``_fill_budget``; every filled atom weighs 1 when the solver chose nothing)."""
    residual: float
    """||b - A_S x|| / ||b|| of the solver's support (before the fill); 0 when b = 0."""
    n_filled: int
    """Atoms added at random because the solver stopped early."""
    steps: int
    """Atoms added (matching-pursuit steps), including those that later left the support."""
    dropped: int
    """Atoms that left the support when their NNLS coefficient reached 0."""


def _fill(n: int, taken: np.ndarray, count: int, generator: torch.Generator | None) -> np.ndarray:
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=gen, device=gen.device).cpu().numpy()
    free = perm[~np.isin(perm, taken)]
    return free[:count].astype(np.int64)


class _Support:
    """The NNLS's support P: atoms in Cholesky order, their gradient rows, q_P = A_P^T b and x_P.

    The rows live in fixed slots (a leaving atom frees its slot, the next one reuses it), so nothing moves
    when an atom leaves; ``slot[pos]`` is the slot of the atom at Cholesky position pos.
    """

    def __init__(self, n: int, k: int, d: int, device: torch.device) -> None:
        self.P: list[int] = []
        self.in_P = np.zeros(n, dtype=bool)
        self.blocked = np.zeros(n, dtype=bool)           # numerically dependent atoms; never retried
        self.rows64 = torch.zeros((k, d), dtype=torch.float64)  # float64 for the Gram
        self.rows32 = torch.zeros((k, d), dtype=torch.float32, device=device)  # the residual, on the device
        self.slot: list[int] = []
        self.free: list[int] = []
        self.used = 0
        self.qP = np.empty(0)
        self.xP = np.empty(0)
        self.chol = Cholesky(k)
        self.dropped = 0
        self.steps = 0
        """Atoms tried (matching-pursuit steps), including those that later left or were blocked."""

    def rel_residual(self, bb: float, bnorm: float, lam: float) -> float:
        """||b - A_P x|| / ||b||: at the NNLS optimum on P, (Q + lam I) x = q, so ||r||^2 = b.b - x.q - lam x.x."""
        xP, qP = self.xP, self.qP
        return math.sqrt(max(bb - float(xP @ qP) - lam * float(xP @ xP), 0.0)) / bnorm

    def residual(self, b: Tensor) -> Tensor:
        """(d,) float32 r = b - A_P x_P on b's device."""
        x_slots = np.zeros(self.used)
        x_slots[self.slot] = self.xP
        return b - torch.from_numpy(x_slots).float().to(b.device) @ self.rows32[:self.used]

    def add(self, js: list[int], G: Tensor, b64: Tensor, lam: float) -> int:
        """Append atoms ``js`` at x = 0 (one block Cholesky append); dependent ones are blocked. Returns how
        many joined."""
        A_new = G[js].double().cpu()                                     # (m, d)
        m = len(js)
        H_old = ((self.rows64[:self.used] @ A_new.T)[torch.tensor(self.slot, dtype=torch.int64)] if self.P
                 else torch.zeros((0, m), dtype=torch.float64))
        H_new = A_new @ A_new.T + lam * torch.eye(m, dtype=torch.float64)
        accepted = self.chol.append(H_old, H_new)
        joined: list[int] = []                                            # positions in js that joined
        for t, j in enumerate(js):
            if not accepted[t]:
                self.blocked[j] = True
                continue
            joined.append(t)
            self.P.append(j)
            self.in_P[j] = True
            if self.free:
                s_new = self.free.pop()
            else:
                s_new, self.used = self.used, self.used + 1
            self.slot.append(s_new)
            self.rows64[s_new] = A_new[t]
            self.rows32[s_new] = G[j]
        self.qP = np.concatenate([self.qP, (A_new[joined] @ b64).numpy()])
        self.xP = np.concatenate([self.xP, np.zeros(len(joined))])
        return len(joined)

    def remove(self, leave: np.ndarray) -> None:
        """Drop the atoms at Cholesky positions ``leave`` (their slots are freed)."""
        self.chol.delete(leave)
        for pos in sorted(leave.tolist(), reverse=True):
            atom = self.P.pop(pos)
            self.in_P[atom] = False
            self.free.append(self.slot.pop(pos))
            self.dropped += 1
        keep = np.ones(self.xP.size, dtype=bool)
        keep[leave] = False
        self.qP, self.xP = self.qP[keep], self.xP[keep]


def _pick_atoms(c: np.ndarray, thr: np.ndarray, sup: _Support, m: int) -> list[int]:
    """Atom selection: the (up to) ``m`` atoms outside the support with the largest correlations ``c`` (n,)
    above the noise floor ``thr`` (n,), best first (ties: lowest index); [] when none is left.

    m > 1 is generalised OMP: the n x d correlation pass and the Gram rows are shared by m atoms."""
    ok = (c > thr) & ~sup.in_P & ~sup.blocked
    if not ok.any():
        return []
    cand = np.where(ok, c, -np.inf)
    take = min(m, int(ok.sum()))
    if take == 1:
        return [int(np.argmax(cand))]  # lowest index among ties
    top = np.argpartition(-cand, take - 1)[:take]
    return sorted(top.tolist(), key=lambda i: (-cand[i], i))


def _nnls_update(sup: _Support) -> None:
    """Lawson-Hanson inner loop: move x_P towards the unconstrained optimum z on P until a coefficient hits
    0; that atom leaves; repeat until z > 0 (then x_P = z).

    Atoms that just joined sit at x = 0: one of them with z <= 0 leaves at once (and is blocked: re-entering
    would cycle) without holding the others at 0 (a zero-length step would drop every atom of the batch,
    good ones included)."""
    while sup.P:
        z = sup.chol.solve(sup.qP)
        if z.min() > 0:
            sup.xP = z
            return
        xP = sup.xP
        stuck = np.flatnonzero((z <= 0) & (xP <= 0))
        if stuck.size:
            leave = stuck
            sup.blocked[[sup.P[pos] for pos in stuck]] = True
        else:
            neg = np.flatnonzero(z <= 0)
            ratio = xP[neg] / (xP[neg] - z[neg])
            alpha = float(ratio.min())
            xP = xP + alpha * (z - xP)
            xP[neg[ratio <= alpha]] = 0.0
            sup.xP = xP
            leave = np.flatnonzero(xP <= 0)
        sup.remove(leave)


def _fill_budget(G: Tensor, b64: Tensor, idx: np.ndarray, w: np.ndarray, count: int,
                 generator: torch.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Fill: ``count`` random atoms join the support ``idx`` (weights ``w``). The reference gives them weight
    1, which adds sum_f g_f (about (m/n) b, in a random direction) on top of a support that already matches
    b; here the support's weights scale by alpha and the fill shares one weight beta, (alpha, beta) =
    argmin ||alpha s + beta f - b||, alpha, beta >= 0, beta >= FILL_FLOOR * mean support weight so every
    weight stays positive. Returns the (k,) indices and weights."""
    dev = G.device
    extra = _fill(G.shape[0], idx, count, generator)
    fill_w = 1.0
    if idx.size:
        f = G[torch.from_numpy(extra).to(dev)].double().sum(0).cpu()
        sv = torch.from_numpy(w) @ G[torch.from_numpy(idx).to(dev)].double().cpu()
        alpha, fill_w = _scale_and_fill_weight(sv, f, b64, FILL_FLOOR * float(w.mean()))
        w = w * alpha
    return np.concatenate([idx, extra]), np.concatenate([w, np.full(extra.size, fill_w)])


def _as_result(idx: np.ndarray, w: np.ndarray, res: float, filled: int, steps: int, dropped: int,
               device: torch.device) -> GradMatchResult:
    wt = torch.from_numpy(np.asarray(w, dtype=np.float64)).float()
    wt = wt.clamp_min(torch.finfo(torch.float32).tiny)  # a positive float64 never rounds to 0
    return GradMatchResult(torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(device), wt.to(device),
                           res, filled, steps, dropped)


def gradmatch_solve(grads: Tensor, budget: int, *, lam: float = 0.5, tol: float = 0.0,
                    generator: torch.Generator | None = None, target: Tensor | None = None,
                    max_steps: int | None = None, atoms_per_step: int | None = None) -> GradMatchResult:
    """Non-negative OMP with diagnostics; see the module docstring and ``gradmatch``.

    Args:
        grads: (n, d) per-example gradients, any float dtype and device (correlations run there).
        budget: coreset size; 0 -> empty; >= n -> every atom with weight 1 (exact for the default target).
        lam: ridge regulariser (>= 0) of the NNLS.
        tol: stop when the relative residual ||r|| / ||b|| falls below ``tol``.
        generator: randomness of the fill (None: a generator seeded with 0).
        target: (d,) target b; default ``grads.sum(0)``.
        max_steps: safety cap on matching-pursuit steps (default 4 n + 16).
        atoms_per_step: atoms added per correlation pass (generalised OMP). None: 1 (plain OMP) for
            budgets under 512, where it is cheap, else budget // 64 (a 30% budget of a 6,000-image
            class adds 28 at a time); ``tests/selection/test_selection.py`` checks that the residual stays within a
            small factor of plain OMP's.
    """
    if grads.dim() != 2:
        raise ValueError(f"grads must be (n, d), got shape {tuple(grads.shape)}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    n, d = grads.shape
    dev = grads.device
    k = max(0, min(int(budget), n))
    m_step = (1 if k < 512 else k // 64) if atoms_per_step is None else int(atoms_per_step)
    if m_step < 1:
        raise ValueError(f"atoms_per_step must be >= 1, got {atoms_per_step}")
    if k == 0:
        return _as_result(np.empty(0), np.empty(0), 1.0 if n else 0.0, 0, 0, 0, dev)
    if k == n:
        return _as_result(np.arange(n), np.ones(n), 0.0, 0, 0, 0, dev)
    G = grads.detach().float()
    b = G.sum(0) if target is None else target.detach().float().to(dev)
    if b.shape != (d,):
        raise ValueError(f"target must have shape ({d},), got {tuple(b.shape)}")
    # Float64 matrix work runs in torch on the CPU: numpy's own BLAS threads fight torch's for the cores, so
    # numpy only does elementwise work and the small m x m blocks of ``Cholesky.append``.
    b64 = b.double().cpu()
    bb = float(b64 @ b64)
    if not math.isfinite(bb):
        raise ValueError("gradmatch: the target has non-finite entries (NaN/inf in the gradients?)")
    if bb == 0.0:
        # Nothing to match (e.g. all-zero gradients): the budget is filled at random.
        return _as_result(_fill(n, np.empty(0, np.int64), k, generator), np.ones(k), 0.0, k, 0, 0, dev)
    sup = _Support(n, k, d, dev)
    _match(G, b, b64, sup, k, tol, m_step, lam, max_steps if max_steps is not None else 4 * n + 16)
    rel = sup.rel_residual(bb, math.sqrt(bb), lam) if sup.P else 1.0
    idx, w = np.asarray(sup.P, dtype=np.int64), sup.xP.copy()
    n_fill = k - len(sup.P)
    if n_fill > 0:
        idx, w = _fill_budget(G, b64, idx, w, n_fill, generator)
        n_fill = int(idx.size) - len(sup.P)
    return _as_result(idx, w, rel, n_fill, sup.steps, sup.dropped, dev)


def _match(G: Tensor, b: Tensor, b64: Tensor, sup: _Support, k: int, tol: float, m_step: int, lam: float,
           cap: int) -> None:
    """The matching-pursuit loop: atom selection by correlation with the residual, block append, NNLS update;
    until the support holds ``k`` atoms, the relative residual is below ``tol``, no atom correlates
    positively, or ``cap`` atoms were tried. G: (n, d) float32; b: (d,) target on G's device, b64 its
    float64 CPU copy."""
    bb = float(b64 @ b64)
    bnorm = math.sqrt(bb)
    # Correlations G r: on a CPU the transposed layout's matrix-vector product is faster.
    GT = G.T.contiguous() if G.device.type == "cpu" else None
    norms = G.norm(dim=1).double().cpu().numpy()
    while len(sup.P) < k and sup.steps < cap:
        if sup.P:
            rel, r = sup.rel_residual(bb, bnorm, lam), sup.residual(b)
        else:
            rel, r = 1.0, b
        if rel < tol:
            break
        c = (r @ GT if GT is not None else G @ r).double().cpu().numpy()
        js = _pick_atoms(c, _COS_EPS * float(r.norm()) * norms, sup, min(m_step, k - len(sup.P)))
        if not js:
            break
        sup.steps += len(js)
        if sup.add(js, G, b64, lam):
            _nnls_update(sup)


FILL_FLOOR = 1e-3
"""Smallest fill weight, as a fraction of the solver's mean weight (weights must stay > 0)."""


def _scale_and_fill_weight(s: Tensor, f: Tensor, b: Tensor, floor: float) -> tuple[float, float]:
    """argmin_{alpha >= 0, beta >= floor} ||alpha s + beta f - b|| for (d,) float64 vectors (a 2-variable
    bounded least squares: the interior optimum if feasible, else the best on the boundary)."""
    ss, ff, sf = float(s @ s), float(f @ f), float(s @ f)
    sb, fb = float(s @ b), float(f @ b)

    def alpha_for(beta: float) -> float:
        return max((sb - beta * sf) / ss, 0.0) if ss > 0 else 0.0

    def cost(a: float, c: float) -> float:
        return float(((a * s + c * f - b) ** 2).sum())

    cands = [(alpha_for(floor), floor)]
    det = ss * ff - sf * sf
    if det > 1e-12 * max(ss * ff, 1e-300):
        a, c = (sb * ff - fb * sf) / det, (fb * ss - sb * sf) / det
        if a >= 0 and c >= floor:
            cands.append((a, c))
    if ff > 0:
        cands.append((0.0, max(fb / ff, floor)))
    return min(cands, key=lambda ac: cost(*ac))


def ridge(grads: Tensor, lam: float, relative: bool) -> float:
    """The NNLS ridge term for ``grads`` (n, d): ``lam`` as given, or with ``relative`` ``lam`` times the mean
    squared gradient norm, so that it weighs the same against the Gram diagonal ||g_j||^2 whatever the scale
    of the gradients (last-layer gradients of a well-fit class are small, and an absolute 0.5 then dominates
    the fit)."""
    if not relative:
        return float(lam)
    return float(lam) * float(grads.detach().double().pow(2).sum(1).mean()) if grads.shape[0] else float(lam)


def gradmatch(grads: Tensor, budget: int, *, lam: float = 0.5, tol: float = 0.0,
              generator: torch.Generator | None = None, target: Tensor | None = None,
              atoms_per_step: int | None = None) -> tuple[Tensor, Tensor]:
    """GradMatch coreset of the rows of ``grads`` (non-negative OMP, ridge-regularised NNLS weights).

    Args:
        grads: (n, d) per-example gradients (columns of A), any float dtype and device.
        budget: coreset size k; 0 -> empty; >= n -> every point with weight 1.
        lam: ridge regulariser of min_{x >= 0} ||A_S x - b||^2 + lam ||x||^2.
        tol: stop matching when ||r|| / ||b|| < tol; the rest of the budget is then filled at random.
        generator: randomness of the fill (None: a generator seeded with 0).
        target: (d,) target b; default sum_i g_i.

    Returns:
        indices: (k,) int64 rows of ``grads`` (support order, then the random fill), on ``grads``' device.
        weights: (k,) float32 > 0 aligned with ``indices``.
    """
    res = gradmatch_solve(grads, budget, lam=lam, tol=tol, generator=generator, target=target,
                          atoms_per_step=atoms_per_step)
    return res.indices, res.weights
