"""A growing and shrinking dense Cholesky factor in float64, for GradMatch's active-set NNLS.

Atoms join the support a block at a time (one multi-right-hand-side triangular solve) and leave it with a
closed-form rank-one update; see ``Cholesky``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


class Cholesky:
    """Lower Cholesky factor L (p x p) of a growing SPD matrix M, dense float64 on the CPU.

    L lives in the top-left corner of a fixed (capacity x capacity) buffer, so appending rows writes only the
    new rows (O(p m)) and removing a row moves only the rows below it (O(r p) for r rows below): a
    contiguous p x p layout would move all p^2 entries on every change of p. LAPACK's solvers cannot read
    such a strided corner without copying it, so the triangular solves are blocked: ``_BLOCK``-sized
    diagonal blocks (copied, small) and matrix products with the strided off-diagonal panels (BLAS reads
    those in place). Only the lower triangle of the corner is ever read. Memory: capacity^2 x 8 bytes (a
    GradMatch budget of 1,800: 26 MB; of 10,000: 800 MB); the buffer doubles if p outgrows it.
    """

    def __init__(self, capacity: int = 16) -> None:
        self._buf = torch.empty((max(1, int(capacity)),) * 2, dtype=torch.float64)
        self.p = 0

    @property
    def L(self) -> Tensor:
        """(p, p) lower-triangular factor, a fresh contiguous copy (for tests and diagnostics)."""
        return torch.tril(self._buf[: self.p, : self.p])

    def _reserve(self, p: int) -> None:
        cap = self._buf.shape[0]
        if p > cap:
            grown = torch.empty((max(p, 2 * cap),) * 2, dtype=torch.float64)
            grown[: self.p, : self.p] = self._buf[: self.p, : self.p]
            self._buf = grown

    def _solve_lower(self, r: Tensor) -> Tensor:
        """L^{-1} r for r (p, m) (blocked forward substitution)."""
        L, p, x = self._buf, self.p, r.clone()
        for b0 in range(0, p, _BLOCK):
            b1 = min(b0 + _BLOCK, p)
            if b0:
                x[b0:b1] -= L[b0:b1, :b0] @ x[:b0]
            x[b0:b1] = torch.linalg.solve_triangular(L[b0:b1, b0:b1].contiguous(), x[b0:b1], upper=False)
        return x

    def _solve_upper(self, r: Tensor) -> Tensor:
        """L^{-T} r for r (p, m) (blocked back substitution)."""
        L, p, x = self._buf, self.p, r.clone()
        for b0 in reversed(range(0, p, _BLOCK)):
            b1 = min(b0 + _BLOCK, p)
            if b1 < p:
                x[b0:b1] -= L[b1:p, b0:b1].T @ x[b1:p]
            x[b0:b1] = torch.linalg.solve_triangular(L[b0:b1, b0:b1].T.contiguous(), x[b0:b1], upper=True)
        return x

    def solve(self, v: np.ndarray) -> np.ndarray:
        """(L L^T)^{-1} v for v (p,) float64."""
        if self.p == 0:
            return np.empty(0)
        y = self._solve_lower(torch.from_numpy(np.asarray(v, dtype=np.float64))[:, None])
        return self._solve_upper(y)[:, 0].numpy()

    def append(self, h_old: Tensor, h_new: Tensor) -> np.ndarray:
        """Extend M to [[M, h_old], [h_old^T, h_new]] with m new rows and columns at once, leaving out each new
        column that is numerically dependent on M and on the new columns accepted before it (its pivot is
        not safely positive).

        One multi-right-hand-side triangular solve W = L^{-1} h_old (BLAS 3, p^2 m) does the work that m
        single appends would do with m matrix-vector solves; the m x m Schur complement h_new - W^T W is
        then factored (column by column when some pivot is too small, which is where dependent columns go).

        Args:
            h_old: (p, m) float64 cross terms with the current columns.
            h_new: (m, m) float64 symmetric block of the new columns (regulariser included).

        Returns:
            (m,) bool: True where the column joined. Accepted columns keep their order, after the p old ones.
        """
        p, m = self.p, h_new.shape[0]
        w = self._solve_lower(h_old) if p else torch.zeros((0, m), dtype=torch.float64)
        s = (h_new - w.T @ w).numpy()  # Schur complement of M in the extended matrix
        floor = 1e-12 * np.maximum(np.diag(h_new.numpy()), 1e-300)
        try:
            f = np.linalg.cholesky(s)
            ok = bool((np.diag(f) ** 2 > floor).all())
        except np.linalg.LinAlgError:
            ok = False
        if ok:
            acc = list(range(m))
        else:  # column by column, skipping dependent ones
            f = np.zeros((m, m))
            acc = []
            for t in range(m):
                a = len(acc)
                v = (torch.linalg.solve_triangular(torch.from_numpy(f[:a, :a]),
                                                   torch.from_numpy(s[acc, t])[:, None], upper=False)[:, 0].numpy()
                     if a else np.empty(0))
                piv = s[t, t] - float(v @ v)
                if piv > floor[t]:
                    f[a, :a] = v
                    f[a, a] = math.sqrt(piv)
                    acc.append(t)
        a = len(acc)
        if a:
            self._reserve(p + a)
            self._buf[p:p + a, :p] = w[:, acc].T
            self._buf[p:p + a, p:p + a] = torch.from_numpy(np.tril(f[:a, :a]))
            self.p = p + a
        mask = np.zeros(m, dtype=bool)
        mask[acc] = True
        return mask

    def delete(self, positions: list[int] | np.ndarray) -> None:
        """Remove the rows and columns ``positions`` of M (no refactorisation).

        With i0 the first removed position, rows above i0 are unchanged. The kept rows below form a lower
        triangular Y (kept columns) and Z (removed columns) with Y' Y'^T = Y Y^T + Z Z^T: one rank-one update
        of Y per removed column, each O(r^2) in closed form (see ``_rank_one_update``); then the kept rows
        move up into place (O(r p)).
        """
        rem = np.unique(np.asarray(positions, dtype=np.int64))
        if rem.size == 0:
            return
        p = self.p
        if rem[0] < 0 or rem[-1] >= p:
            raise IndexError(f"rows {rem.tolist()} out of range for a {p} x {p} factor")
        i0 = int(rem[0])
        keep = np.ones(p, dtype=bool)
        keep[rem] = False
        tail = torch.from_numpy(np.flatnonzero(keep[i0:]) + i0)  # kept rows at or below i0
        rows = self._buf[tail, :p]                              # (r, p) copy
        y = np.tril(rows[:, tail].numpy())  # the buffer's upper triangle is never written
        z = rows[:, torch.from_numpy(rem)].numpy()
        for c in range(rem.size):
            _rank_one_update(y, z[:, c])
        r = tail.numel()
        self._buf[i0:i0 + r, :i0] = rows[:, :i0]
        self._buf[i0:i0 + r, i0:i0 + r] = torch.from_numpy(y)
        self.p = p - rem.size


_BLOCK = 256
"""Diagonal block size of ``Cholesky``'s blocked triangular solves."""


def _rank_one_update(l: np.ndarray, x: np.ndarray) -> None:
    """Overwrite the lower Cholesky factor ``l`` (r x r, C-contiguous) of A with that of A + x x^T.

    With u = l^{-1} x, the new factor is l C where C is the Cholesky factor of I + u u^T, which has a closed
    form (t_j = 1 + u_1^2 + ... + u_j^2, t_0 = 1): C_jj = sqrt(t_j / t_{j-1}), C_ij = u_i u_j / sqrt(t_j t_{j-1})
    for i > j. So l C is a column scaling of l plus suffix sums of the columns of l diag(u): O(r^2) and
    vectorised, where a Givens sweep needs a Python loop over r.
    """
    if l.shape[0] == 0:
        return
    u = torch.linalg.solve_triangular(torch.from_numpy(l), torch.from_numpy(np.ascontiguousarray(x))[:, None],
                                      upper=False)[:, 0].numpy()
    t = 1.0 + np.cumsum(u * u)
    t_prev = np.concatenate([[1.0], t[:-1]])
    sfx = l * u  # column j times u_j
    rows = sfx.sum(1, keepdims=True)
    np.cumsum(sfx, axis=1, out=sfx)
    np.subtract(rows, sfx, out=sfx)  # sum over the columns after j
    sfx *= u / np.sqrt(t * t_prev)
    l *= np.sqrt(t / t_prev)
    l += sfx
