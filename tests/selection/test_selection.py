"""Coreset selection (selection/craig.py, gradmatch.py, selectors.py) against brute-force references:
naive greedy, exhaustive facility location, scipy's NNLS, hand-built clusters with known weights, exact
per-class budgets, and index bookkeeping under permutations (the official code's CRAIG bug)."""

from __future__ import annotations

import importlib
import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from torch import Tensor

from advcoreset.config import Config, SelectionConfig
from advcoreset.config_checks import validate
from advcoreset.selection import (
    Selection,
    approximation_error,
    available_selectors,
    build_selector,
    class_budget,
    craig,
    gradmatch,
    gradmatch_solve,
    last_layer_grads,
)
from advcoreset.selection.cholesky import Cholesky
from advcoreset.selection.craig import (
    assign_weights,
    facility_location_greedy,
    pairwise_sq_dists,
    similarity,
)
from advcoreset.selection.gradmatch import FILL_FLOOR


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clusters(sizes: list[int], d: int = 8, spread: float = 0.05, seed: int = 0,
             scale: float = 10.0) -> tuple[Tensor, Tensor]:
    """Points around len(sizes) well-separated centres, rows shuffled. Returns (x (n, d), cluster id (n,))."""
    g = gen(seed)
    centres = scale * torch.randn(len(sizes), d, generator=g)
    cid = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    cid = cid[torch.randperm(cid.numel(), generator=g)]
    return centres[cid] + spread * torch.randn(cid.numel(), d, generator=g), cid


def naive_greedy(dist: np.ndarray, k: int, u: np.ndarray | None = None) -> tuple[list[int], float]:
    """Textbook greedy on s = max(d) - d: every step evaluates F(S + j) - F(S) for every j from scratch
    (float64). Returns the choices and the smallest relative gap between the best and second-best gain."""
    s = dist.max() - dist.astype(np.float64)
    n = s.shape[0]
    u = np.ones(n) if u is None else u
    chosen: list[int] = []
    gap = np.inf

    def F(S: list[int]) -> float:
        return float((u * s[:, S].max(1)).sum()) if S else 0.0

    for _ in range(k):
        base = F(chosen)
        gains = np.array([F(chosen + [j]) - base if j not in chosen else -np.inf for j in range(n)])
        top2 = np.sort(gains)[-2:]
        gap = min(gap, (top2[1] - top2[0]) / top2[1])
        chosen.append(int(np.argmax(gains)))
    return chosen, gap


# --------------------------------------------------------------------------------------------- CRAIG
def test_pairwise_distances_match_brute_force_across_chunks():
    x = torch.randn(37, 6, generator=gen(1)) + 3.0
    ref = ((x[:, None, :].double() - x[None, :, :].double()) ** 2).sum(-1).numpy()
    for chunk in (1, 5, 37, 100):
        d = pairwise_sq_dists(x, chunk=chunk)
        assert d.shape == (37, 37) and d.dtype == np.float32
        np.testing.assert_allclose(d, ref, rtol=1e-4, atol=1e-3)
        assert np.array_equal(d, d.T) and np.all(np.diag(d) == 0) and d.min() >= 0
    s = similarity(x)
    np.testing.assert_allclose(s, ref.max() - ref, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("seed", range(8))
def test_lazy_greedy_equals_naive_greedy(seed):
    g = gen(seed)
    n = 40 + 5 * seed
    x = torch.randn(n, 5, generator=g)
    dist = pairwise_sq_dists(x)
    u = torch.rand(n, generator=g).numpy() + 0.1
    # Late in a run, two points that only cover each other tie exactly (s symmetric); tie-breaking then
    # hinges on float rounding, so the budgets stop before such ties (the gap check proves it).
    for k, w in ((6, None), (12, u)):
        ref, gap = naive_greedy(dist, k, w)
        assert gap > 1e-4
        assert facility_location_greedy(dist, k, w).tolist() == ref


def test_greedy_within_one_minus_one_over_e_of_exhaustive_optimum():
    x = torch.randn(11, 3, generator=gen(3))
    dist = pairwise_sq_dists(x)
    sim = similarity(x).astype(np.float64)
    for k in (1, 2, 3, 4):
        def F(S):
            return sim[:, list(S)].max(1).sum()
        opt = max(F(S) for S in itertools.combinations(range(11), k))
        got = F(facility_location_greedy(dist, k))
        assert got >= (1 - 1 / math.e) * opt - 1e-6
        if k == 1:
            assert got == pytest.approx(opt)  # one greedy step is exact


def test_craig_picks_one_per_cluster_with_cluster_sizes_as_weights():
    sizes = [5, 23, 12]
    x, cid = clusters(sizes)
    idx, w = craig(x, 3)
    assert idx.dtype == torch.int64 and w.dtype == torch.float32
    assert sorted(cid[idx].tolist()) == [0, 1, 2]
    for i, wt in zip(idx.tolist(), w.tolist(), strict=True):
        assert wt == sizes[int(cid[i])]  # the weight sits on a member of the right cluster
    # Greedy takes the biggest cluster first (largest coverage gain).
    assert int(cid[idx[0]]) == 1
    assert approximation_error(x, idx, w) < 0.01


def test_craig_exact_duplicates():
    base = torch.randn(4, 6, generator=gen(2)) * 5
    reps = torch.tensor([1, 6, 3, 10])
    rid = torch.repeat_interleave(torch.arange(4), reps)
    rid = rid[torch.randperm(rid.numel(), generator=gen(3))]
    x = base[rid]
    idx, w = craig(x, 4)
    assert sorted(rid[idx].tolist()) == [0, 1, 2, 3]
    assert [float(reps[rid[i]]) for i in idx] == w.tolist()
    # More budget than distinct points: the extra picks are copies; each still represents itself.
    idx, w = craig(x, 7)
    assert idx.unique().numel() == 7 and float(w.sum()) == rid.numel() and bool((w >= 1).all())
    assert approximation_error(x, idx, w) < 1e-5


def test_craig_does_not_depend_on_input_order():
    """The official code's bug: positions read in shuffled order but mapped back unshuffled."""
    x, _ = clusters([7, 15, 30, 9], d=5, spread=1.0, seed=0, scale=3.0)
    n = x.shape[0]
    idx, w = craig(x, 12)
    ref, gap = naive_greedy(pairwise_sq_dists(x), 12)
    assert idx.tolist() == ref and gap > 1e-3  # no ties, so the lowest-index rule plays no part
    for seed in range(3):
        perm = torch.randperm(n, generator=gen(10 + seed))
        idx_p, w_p = craig(x[perm], 12)
        mapped = perm[idx_p]
        assert sorted(mapped.tolist()) == sorted(idx.tolist())
        assert dict(zip(mapped.tolist(), w_p.tolist(), strict=True)) == dict(
            zip(idx.tolist(), w.tolist(), strict=True))


def test_craig_weights_count_nearest_selected_points_brute_force():
    x = torch.randn(50, 4, generator=gen(5))
    idx, w = craig(x, 8)
    d = torch.cdist(x.double(), x[idx].double())
    nearest = d.argmin(1)
    nearest[idx] = torch.arange(8)
    assert w.tolist() == torch.bincount(nearest, minlength=8).float().tolist()
    assert float(w.sum()) == 50


def test_craig_edge_cases():
    x = torch.randn(10, 3, generator=gen(6))
    idx, w = craig(x, 0)
    assert idx.numel() == 0 and w.numel() == 0
    for k in (10, 15):
        idx, w = craig(x, k)
        assert idx.tolist() == list(range(10)) and w.tolist() == [1.0] * 10
    idx, w = craig(torch.zeros(9, 4), 3)  # every point identical: ties to the lowest indices
    assert idx.tolist() == [0, 1, 2] and w.tolist() == [7.0, 1.0, 1.0]
    idx, w = craig(x[:1], 1)
    assert idx.tolist() == [0] and w.tolist() == [1.0]
    with pytest.raises(ValueError, match="grads must be"):
        craig(torch.randn(5), 2)


def test_craig_partitioned_for_large_classes():
    x, cid = clusters([60, 100, 90], d=4, spread=0.5, seed=7)
    idx, w = craig(x, 30, max_size=100, generator=gen(0))
    assert idx.numel() == 30 and idx.unique().numel() == 30 and float(w.sum()) == 250
    idx2, w2 = craig(x, 30, max_size=100, generator=gen(0))
    assert torch.equal(idx, idx2) and torch.equal(w, w2)
    assert approximation_error(x, idx, w) < 0.05


def test_assign_weights_with_point_weights():
    x = torch.tensor([[0.0], [0.1], [5.0], [5.2], [5.1]])
    w = assign_weights(pairwise_sq_dists(x), np.array([2, 0]), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert w.tolist() == [12.0, 3.0]  # aligned with the order given


# ------------------------------------------------------------------------------------------ GradMatch
@pytest.mark.parametrize("block", [7, 256])  # solves over several diagonal blocks, and over one
@pytest.mark.parametrize("ridge", [0.1, 1e-7])  # well and badly conditioned
def test_cholesky_block_append_and_delete(ridge, block, monkeypatch):
    monkeypatch.setattr(importlib.import_module("advcoreset.selection.cholesky"), "_BLOCK", block)
    rng = np.random.default_rng(0)
    n = 40
    a = rng.standard_normal((n, n + 3))
    m = a @ a.T + ridge * np.eye(n)
    ch = Cholesky(4)  # grows as it fills
    i = 0
    for size in (1, 5, 3, 7, 1, 11, 12):  # blocks of new columns, then single ones
        j = i + size
        ok = ch.append(torch.from_numpy(m[:i, i:j].copy()), torch.from_numpy(m[i:j, i:j].copy()))
        assert ok.all()
        i = j
    assert ch.p == n
    np.testing.assert_allclose(ch.L.numpy(), np.linalg.cholesky(m), atol=1e-9)
    v = rng.standard_normal(n)
    np.testing.assert_allclose(ch.solve(v), np.linalg.solve(m, v), rtol=1e-6)
    keep = list(range(n))
    for rem in ([4], [0], [36], [3, 7, 8], [28, 1, 2]):  # interior, first, next to last, sets
        ch.delete(rem)
        keep = [k for pos, k in enumerate(keep) if pos not in rem]
        ref = np.linalg.cholesky(m[np.ix_(keep, keep)])
        np.testing.assert_allclose(ch.L.numpy(), ref, atol=1e-9 * np.abs(ref).max())
    ch.delete([30])  # the last row: nothing below it to update
    keep.pop()
    assert ch.p == len(keep) == 30
    np.testing.assert_allclose(ch.L.numpy(), np.linalg.cholesky(m[np.ix_(keep, keep)]), atol=1e-9)


def test_cholesky_append_skips_dependent_columns():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 9))
    m = a @ a.T
    ch = Cholesky()
    assert ch.append(torch.zeros((0, 4), dtype=torch.float64), torch.from_numpy(m[:4, :4].copy())).all()
    # New columns: 4, a copy of old column 1, 5, and a copy of new column 4 (dependent within the block).
    cols = [4, 1, 5, 4]
    ok = ch.append(torch.from_numpy(m[np.ix_(range(4), cols)]), torch.from_numpy(m[np.ix_(cols, cols)]))
    assert ok.tolist() == [True, False, True, False]
    np.testing.assert_allclose(ch.L.numpy(), np.linalg.cholesky(m), atol=1e-10)


def ridge_nnls(A: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    k = A.shape[1]
    x, _ = nnls(np.vstack([A, math.sqrt(lam) * np.eye(k)]), np.concatenate([b, np.zeros(k)]),
                maxiter=50 * k)
    return x


@pytest.mark.parametrize(("lam", "seed", "per_step"), [(0.5, 0, 1), (0.5, 1, 1), (0.05, 2, 1), (0.0, 3, 1),
                                                      (0.5, 0, 4), (0.05, 2, 7)])
def test_gradmatch_weights_equal_scipy_nnls_on_the_support(lam, seed, per_step):
    g = gen(seed)
    x, _ = clusters([40, 30, 60, 20, 50], d=80, spread=1.5, seed=seed, scale=1.0)
    x[:40] *= -1  # anti-correlated atoms make the NNLS drop atoms along the way
    x = x + 0.3 * torch.randn(x.shape, generator=g)
    res = gradmatch_solve(x, 60, lam=lam, tol=1e-9, atoms_per_step=per_step)
    assert res.n_filled == 0 and res.indices.numel() == 60 and res.indices.unique().numel() == 60
    A = x[res.indices].double().numpy().T
    b = x.sum(0).double().numpy()
    ref = ridge_nnls(A, b, lam)
    assert ref.min() > 0  # the returned support is exactly the NNLS's positive set
    np.testing.assert_allclose(res.weights.double().numpy(), ref, rtol=2e-5, atol=1e-6 * ref.max())
    resid = np.linalg.norm(A @ ref - b) / np.linalg.norm(b)
    assert res.residual == pytest.approx(resid, rel=1e-5, abs=1e-9)
    if seed == 0 and per_step == 1:
        assert res.dropped > 0  # the Cholesky downdate path was exercised


@pytest.mark.parametrize("seed", range(3))
def test_generalised_omp_matches_as_well_as_plain_omp(seed):
    """Atoms sharing one direction (like a class's gradients): when several join at once and one of them
    gets a negative coefficient, only that one may leave. (A zero-length Lawson-Hanson step once dropped
    and blocked the whole batch: residual 1.6e-2 instead of 1e-8 on seed 0, 2.7x plain OMP's on seed 2.)"""
    g = gen(seed)
    x = torch.randn(600, 40, generator=g) + 1.5 * torch.randn(40, generator=g)
    # budget 200 > d = 40: an exact non-negative match exists (Caratheodory), which plain OMP finds
    exact = gradmatch_solve(x, 200, lam=0.0, tol=1e-6, atoms_per_step=8)
    assert exact.residual < 1e-6
    assert exact.dropped < 0.25 * exact.steps
    plain = gradmatch_solve(x, 200, lam=0.5, tol=1e-9, atoms_per_step=1)
    batched = gradmatch_solve(x, 200, lam=0.5, tol=1e-9, atoms_per_step=8)
    assert batched.residual <= 1.3 * plain.residual


def test_default_atoms_per_step_matches_about_as_well_as_plain_omp():
    """Budgets >= 512 add budget // 64 atoms per step by default (block appends, fewer correlation passes).
    The match stays within a small factor of plain OMP's (measured 1.1-1.9x, at residuals near 1e-3) and
    far below a random coreset's, with no fill at tol = 0."""
    g = gen(0)
    x = torch.randn(1500, 700, generator=g) + 0.2 * torch.randn(700, generator=g)
    batched = gradmatch_solve(x, 600)  # tol 0, m = 9
    plain = gradmatch_solve(x, 600, atoms_per_step=1)
    assert batched.n_filled == plain.n_filled == 0 and batched.indices.unique().numel() == 600
    assert batched.steps < 1.25 * plain.steps
    rand = torch.randperm(1500, generator=g)[:600]
    rand_err = approximation_error(x, rand, torch.full((600,), 1500 / 600))
    assert batched.residual <= 2.5 * plain.residual
    assert batched.residual < 0.05 * rand_err
    np.testing.assert_allclose(approximation_error(x, batched.indices, batched.weights), batched.residual,
                               rtol=1e-3)


def test_gradmatch_known_answer_on_orthogonal_atoms():
    """Rows are basis vectors e_c repeated m_c times: b = sum_c m_c e_c. Without ridge: one atom per
    direction with weight m_c, largest multiplicity first."""
    mult = [3, 9, 5, 1]
    rows = torch.repeat_interleave(torch.eye(6)[:4], torch.tensor(mult), dim=0)
    perm = torch.randperm(rows.shape[0], generator=gen(1))
    x = rows[perm]
    direction = x.argmax(1)
    idx, w = gradmatch(x, 4, lam=0.0, tol=1e-9)
    assert direction[idx].tolist() == [1, 2, 0, 3]
    np.testing.assert_allclose(w.numpy(), [9, 5, 3, 1], rtol=1e-6)
    # Ties within a direction go to the lowest index.
    assert idx.tolist() == [int(torch.nonzero(direction == c)[0]) for c in (1, 2, 0, 3)]
    # Ridge lam = 0.5: x = 9 / 1.5 = 6 leaves r = 3 e_1 + 3 e_0 + 5 e_2 + e_3, so e_2 follows (10 / 3).
    idx, w = gradmatch(x, 2, lam=0.5, tol=1e-9)
    assert direction[idx].tolist() == [1, 2]
    np.testing.assert_allclose(w.numpy(), [6, 10 / 3], rtol=1e-6)


def test_gradmatch_early_stop_fills_budget_at_random_with_fitted_weights():
    x = torch.repeat_interleave(torch.eye(3), torch.tensor([4, 4, 4]), dim=0)  # b reached with 3 atoms
    res = gradmatch_solve(x, 7, lam=0.0, tol=1e-6, generator=gen(0))
    assert res.indices.numel() == 7 and res.indices.unique().numel() == 7 and res.n_filled == 4
    assert res.residual < 1e-6
    # The support (4, 4, 4) already equals b, so the best fill weight is 0: it sits at its floor
    # FILL_FLOOR * mean support weight = 4e-3, and the support scales by alpha = <s, b - c f> / <s, s>
    # = 1 - 4e-3 * 16 / 48 (the four filled unit gradients f have <s, f> = 16 whatever their directions).
    c = FILL_FLOOR * 4
    np.testing.assert_allclose(res.weights[3:].numpy(), [c] * 4, rtol=1e-6)
    np.testing.assert_allclose(res.weights[:3].numpy(), [4 * (1 - c * 16 / 48)] * 3, rtol=1e-6)
    ones = torch.cat([torch.full((3,), 8 / 3), torch.ones(4)])  # the reference's weight-1 fill, rescaled
    assert approximation_error(x, res.indices, res.weights) < approximation_error(x, res.indices, ones)
    other = gradmatch_solve(x, 7, lam=0.0, tol=1e-6, generator=gen(5))
    same = gradmatch_solve(x, 7, lam=0.0, tol=1e-6, generator=gen(0))
    assert torch.equal(same.indices, res.indices)
    assert not torch.equal(other.indices[3:], res.indices[3:])


def test_gradmatch_degenerate_inputs():
    idx, w = gradmatch(torch.zeros(20, 5), 6, generator=gen(0))  # nothing to match: all filled
    assert idx.numel() == 6 and idx.unique().numel() == 6 and w.tolist() == [1.0] * 6
    idx, w = gradmatch(torch.randn(8, 3), 8)
    assert idx.tolist() == list(range(8)) and w.tolist() == [1.0] * 8
    idx, w = gradmatch(torch.randn(8, 3), 0)
    assert idx.numel() == 0
    # Duplicates with lam = 0: a dependent atom must not break the Cholesky factor.
    x = torch.randn(5, 4, generator=gen(2)).repeat(3, 1)
    idx, w = gradmatch(x, 6, lam=0.0, tol=1e-12)
    assert idx.numel() == 6 and idx.unique().numel() == 6 and bool((w > 0).all())
    with pytest.raises(ValueError, match="lam"):
        gradmatch(x, 2, lam=-1.0)


# ------------------------------------------------------------------------------------------ selectors
def sel_cfg(**kw) -> SelectionConfig:
    return SelectionConfig(**kw)


def structured_problem(seed: int = 0) -> tuple[Tensor, Tensor]:
    """Three classes, each a mixture of clusters of unequal sizes (gradients with a non-zero mean)."""
    xs, ys = [], []
    for c, sizes in enumerate([[80, 20, 50, 10], [120, 30], [40, 40, 15, 60, 5]]):
        x, _ = clusters(sizes, d=12, spread=0.3, seed=seed + 10 * c, scale=1.0)
        xs.append(x + 1.0)
        ys.append(torch.full((x.shape[0],), c))
    x, y = torch.cat(xs), torch.cat(ys)
    perm = torch.randperm(y.numel(), generator=gen(seed))
    return x[perm], y[perm]


def per_class_error(x: Tensor, y: Tensor, sel: Selection) -> float:
    """Worst over classes of ||sum_c g - sum_c w g|| / ||sum_c g||."""
    errs = []
    for c in y.unique():
        m = y[sel.indices] == c
        members = torch.nonzero(y == c).squeeze(1)
        local = torch.searchsorted(members, sel.indices[m])
        errs.append(approximation_error(x[members], local, sel.weights[m]))
    return max(errs)


def test_available_selectors_and_build_from_config():
    assert available_selectors() == ["craig", "full", "gradmatch", "random", "random_fixed", "rs2"]
    s = build_selector(sel_cfg(method="gradmatch", fraction=0.2, batchwise=True, selection_batch_size=16,
                               lam=0.1, tol=0.01), seed=3)
    assert (s.name, s.needs_grads, s.fraction, s.batchwise, s.batch_size, s.lam, s.tol, s.seed) == (
        "gradmatch", True, 0.2, True, 16, 0.1, 0.01, 3)
    s = build_selector(sel_cfg(method="craig", max_class_size=77), seed=0)
    assert s.max_class_size == 77 and s.needs_grads
    for m in ("full", "random", "random_fixed"):
        assert not build_selector(sel_cfg(method=m), seed=0).needs_grads
    with pytest.raises(KeyError, match="unknown selector"):
        build_selector(sel_cfg(method="kmeans"), seed=0)
    validate(Config())  # the config validates method names against this registry


@pytest.mark.parametrize("method", ["random", "random_fixed", "craig", "gradmatch"])
def test_per_class_budgets_are_exact_and_classes_never_mix(method):
    rng = np.random.default_rng(0)
    for trial in range(4):
        sizes = rng.integers(1, 40, size=rng.integers(1, 7)).tolist()
        y = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
        y = y[torch.randperm(y.numel(), generator=gen(trial))]
        x = torch.randn(y.numel(), 4, generator=gen(trial)) + y.unsqueeze(1).float()
        for frac in (0.1, 0.3, 0.5, 0.7, 1.0):
            sel = build_selector(sel_cfg(method=method, fraction=frac), seed=0).select(x, y, gen(trial))
            assert torch.equal(sel.indices, sel.indices.sort().values) and sel.indices.unique().numel() == len(
                sel.indices)
            assert bool((sel.weights > 0).all()) and sel.weights.dtype == torch.float32
            for c, n_c in enumerate(sizes):
                k = math.ceil(Fraction(str(frac)) * n_c)
                assert class_budget(frac, n_c) == k
                in_c = y[sel.indices] == c
                assert int(in_c.sum()) == k, (method, frac, n_c)
                if method != "gradmatch":  # GradMatch's weights are NNLS coefficients, not counts
                    assert float(sel.weights[in_c].sum()) == pytest.approx(n_c, rel=1e-5)
                if frac == 1.0:
                    assert sel.weights[in_c].tolist() == [1.0] * n_c
            json.dumps(sel.stats)


def test_full_selector():
    y = torch.tensor([2, 0, 1, 1])
    sel = build_selector(sel_cfg(method="full"), seed=0).select(None, y, gen())
    assert sel.indices.tolist() == [0, 1, 2, 3] and sel.weights.tolist() == [1.0] * 4


def test_random_redraws_and_random_fixed_does_not():
    y = torch.arange(300) % 3
    rnd = build_selector(sel_cfg(method="random", fraction=0.2), seed=0)
    a, b = rnd.select(None, y, gen(1)), rnd.select(None, y, gen(2))
    assert not torch.equal(a.indices, b.indices)
    assert a.weights.tolist() == [5.0] * 60  # n_c / k_c = 100 / 20
    fixed = build_selector(sel_cfg(method="random_fixed", fraction=0.2), seed=0)
    c, d = fixed.select(None, y, gen(1)), fixed.select(None, y, gen(2))
    assert torch.equal(c.indices, d.indices)
    other = build_selector(sel_cfg(method="random_fixed", fraction=0.2), seed=1).select(None, y, gen(1))
    assert not torch.equal(c.indices, other.indices)


@pytest.mark.parametrize("method", ["craig", "gradmatch"])
def test_selector_indices_follow_a_permuted_dataset(method):
    x, y = structured_problem(1)
    s = build_selector(sel_cfg(method=method, fraction=0.1), seed=0)
    ref = s.select(x, y, gen(0))
    perm = torch.randperm(y.numel(), generator=gen(9))
    got = s.select(x[perm], y[perm], gen(0))
    back = perm[got.indices]
    order = back.argsort()
    assert torch.equal(back[order], ref.indices)
    torch.testing.assert_close(got.weights[order], ref.weights, rtol=1e-4, atol=1e-5)


def test_solvers_beat_random_on_structured_gradients():
    x, y = structured_problem(2)
    frac = 0.05
    rand_errs = [per_class_error(x, y, build_selector(sel_cfg(method="random", fraction=frac), seed=0)
                                 .select(None, y, gen(s))) for s in range(5)]
    craig_err = per_class_error(x, y, build_selector(sel_cfg(method="craig", fraction=frac), 0).select(x, y, gen()))
    gm = build_selector(sel_cfg(method="gradmatch", fraction=frac, lam=0.01), 0).select(x, y, gen())
    gm_err = per_class_error(x, y, gm)
    assert craig_err < min(rand_errs) and gm_err < min(rand_errs)
    assert gm_err < 0.02 and craig_err < 0.1
    assert gm.stats["solver_seconds"] >= 0
    for c in ("0", "1", "2"):
        st = gm.stats["classes"][c]
        assert st["approx_error"] == pytest.approx(st["residual"], rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("method", ["craig", "gradmatch"])
def test_batchwise_selects_whole_fixed_batches_and_weights_matter(method):
    x, y = structured_problem(3)
    cfg = sel_cfg(method=method, fraction=0.3, batchwise=True, selection_batch_size=8, lam=0.01)
    s = build_selector(cfg, seed=4)
    sel = s.select(x, y, gen(0))
    assert torch.equal(s.select(x, y, gen(7)).indices, sel.indices)  # the batch split is fixed
    uniform = torch.empty_like(sel.weights)
    for c in y.unique():
        m = y[sel.indices] == c
        n_c = int((y == c).sum())
        st = sel.stats["classes"][str(int(c))]
        n_b = math.ceil(n_c / 8)
        assert st["n_batches"] == n_b and st["budget"] == math.ceil(Fraction(3, 10) * n_b)
        # Whole batches: as many members as the chosen batches hold (one short batch at most).
        assert st["selected"] == int(m.sum()) and 8 * st["budget"] - 7 <= st["selected"] <= 8 * st["budget"]
        uniform[m] = n_c / int(m.sum())
        if method == "craig":
            assert float(sel.weights[m].sum()) == pytest.approx(n_c, rel=1e-5)
    assert sel.weights.unique().numel() > 1
    weighted = per_class_error(x, y, sel)
    flat = per_class_error(x, y, Selection(sel.indices, uniform))
    assert weighted < flat
    if method == "gradmatch":
        assert weighted < 0.5 * flat


def test_batchwise_member_weights_represent_batch_weights_exactly():
    """sum_members w_i g_i must equal B * sum_b w_b m_b: with one class of 20 examples in batches of 8
    (sizes 8, 8, 4) and fraction 1, every example is kept with weight 1 (batch weights |b| / B)."""
    x = torch.randn(20, 3, generator=gen(0))
    y = torch.zeros(20, dtype=torch.int64)
    for method in ("craig", "gradmatch"):
        sel = build_selector(sel_cfg(method=method, fraction=1.0, batchwise=True, selection_batch_size=8),
                             0).select(x, y, gen())
        assert sel.indices.tolist() == list(range(20))
        torch.testing.assert_close(sel.weights, torch.ones(20))


def test_selector_input_errors():
    y = torch.zeros(10, dtype=torch.int64)
    with pytest.raises(ValueError, match="needs per-example gradients"):
        build_selector(sel_cfg(method="craig"), 0).select(None, y, gen())
    with pytest.raises(ValueError, match="grads must be"):
        build_selector(sel_cfg(method="gradmatch"), 0).select(torch.randn(9, 3), y, gen())
    with pytest.raises(ValueError, match="NaN"):
        build_selector(sel_cfg(method="craig"), 0).select(torch.full((10, 3), float("nan")), y, gen())


def test_exports():
    assert callable(last_layer_grads)


@pytest.mark.parametrize("batchwise", [False, True])
def test_selectors_survive_all_zero_gradients(batchwise):
    y = torch.tensor([0] * 30 + [1] * 7)
    for method in ("craig", "gradmatch"):
        cfg = sel_cfg(method=method, fraction=0.25, batchwise=batchwise, selection_batch_size=4)
        sel = build_selector(cfg, 0).select(torch.zeros(37, 5), y, gen(0))
        per_class = torch.bincount(y[sel.indices], minlength=2).tolist()
        if batchwise:  # whole batches: ceil(0.25 * 8) = 2 of class 0's batches, ceil(0.25 * 2) = 1 of class 1's
            assert 5 <= per_class[0] <= 8 and 3 <= per_class[1] <= 4
        else:
            assert per_class == [8, 2]
        assert bool((sel.weights > 0).all()) and sel.indices.unique().numel() == sel.indices.numel()


def test_generalised_omp_matches_plain_omp_quality():
    """Several atoms per correlation pass (the default for large budgets) reach the same residual."""
    x, _ = clusters([300, 200, 400, 100], d=60, spread=1.0, seed=4, scale=1.0)
    x = x + 0.3 * torch.randn(x.shape, generator=gen(4))
    one = gradmatch_solve(x, 200, lam=0.5, tol=1e-4, atoms_per_step=1)
    many = gradmatch_solve(x, 200, lam=0.5, tol=1e-4, atoms_per_step=8)
    e1 = approximation_error(x, one.indices, one.weights)
    e8 = approximation_error(x, many.indices, many.weights)
    assert e8 <= 1.5 * e1 + 1e-3
    with pytest.raises(ValueError, match="atoms_per_step"):
        gradmatch_solve(x, 10, atoms_per_step=0)


def test_craig_falls_back_to_partitions_when_distances_do_not_fit(monkeypatch):
    """A class under max_size whose n x n distances still do not fit is solved in parts, never a crash."""
    import importlib

    craig_mod = importlib.import_module("advcoreset.selection.craig")  # the module, not the function
    real = craig_mod.pairwise_sq_dists

    def small_memory(g, chunk=2048):
        if g.shape[0] > 50:
            raise MemoryError("no room")
        return real(g, chunk)

    monkeypatch.setattr(craig_mod, "pairwise_sq_dists", small_memory)
    x = torch.randn(120, 6, generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match="do not fit in memory"):
        idx, w = craig(x, 12)
    assert idx.numel() == 12 and idx.unique().numel() == 12
    assert float(w.sum()) == pytest.approx(120.0)
    assert bool((w >= 1).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradmatch_fill_weights_are_the_bounded_least_squares_optimum(seed):
    """(alpha, beta) of the fill beat every point of a fine grid of alpha >= 0, beta >= floor (brute force)."""
    from advcoreset.selection.gradmatch import _scale_and_fill_weight

    g = torch.Generator().manual_seed(seed)
    s, f = torch.randn(20, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    b = 0.7 * s + 0.4 * f + 0.3 * torch.randn(20, generator=g, dtype=torch.float64)
    floor = 0.05
    a, c = _scale_and_fill_weight(s, f, b, floor)
    assert a >= 0 and c >= floor
    best = float(((a * s + c * f - b) ** 2).sum())
    grid = torch.linspace(0, 2, 201, dtype=torch.float64)
    ga, gc = torch.meshgrid(grid, grid[grid >= floor], indexing="ij")
    brute = float(((ga[..., None] * s + gc[..., None] * f - b) ** 2).sum(-1).min())
    assert best <= brute + 1e-12


def test_relative_ridge_makes_gradmatch_scale_invariant():
    """With lam_relative the ridge scales with the gradients, so gradients 1,000 times smaller get the same
    coreset (and weights); with the absolute lam the ridge swamps the small gradients and the fit is worse."""
    from advcoreset.selection import ridge
    from advcoreset.selection.selectors import GradMatchSelector

    g = torch.Generator().manual_seed(3)
    grads = torch.randn(120, 16, generator=g, dtype=torch.float64).abs() + 0.1 * torch.randn(120, 16, generator=g,
                                                                                          dtype=torch.float64)
    assert ridge(grads, 0.5, False) == 0.5
    assert ridge(grads, 0.5, True) == pytest.approx(0.5 * float((grads ** 2).sum(1).mean()))
    labels = torch.zeros(120, dtype=torch.long)
    rel = GradMatchSelector(0.2, lam=0.5, lam_relative=True)
    big = rel.select(grads, labels, torch.Generator().manual_seed(0))
    small = rel.select(grads * 1e-3, labels, torch.Generator().manual_seed(0))
    assert torch.equal(big.indices, small.indices)
    assert torch.allclose(big.weights, small.weights, rtol=1e-4)
    absolute = GradMatchSelector(0.2, lam=0.5).select(grads * 1e-3, labels, torch.Generator().manual_seed(0))
    err = lambda sel: approximation_error(grads, sel.indices, sel.weights)  # noqa: E731
    assert err(small) < err(absolute)


def test_solver_threads_run_the_solver_with_that_many_and_restore():
    from advcoreset.selection.selectors import GradMatchSelector, torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    seen = []
    sel = GradMatchSelector(0.3, solver_threads=1)
    solve = sel._solve
    sel._solve = lambda *a: (seen.append(torch.get_num_threads()), solve(*a))[1]  # type: ignore[method-assign]
    grads = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(60) % 3
    one = sel.select(grads, labels, torch.Generator().manual_seed(0))
    assert seen == [1, 1, 1] and torch.get_num_threads() == before
    default = GradMatchSelector(0.3).select(grads, labels, torch.Generator().manual_seed(0))
    assert torch.equal(one.indices, default.indices) and torch.equal(one.weights, default.weights)


def test_rs2_rounds_partition_each_class_before_repeating() -> None:
    """With budget dividing the class, rounds 0..n_c/k-1 cover every example exactly once; the next cycle
    is a new permutation; a straddling round (k not dividing n_c) holds no duplicates and completes the
    cycle; everything is a function of (seed, round) only."""
    from advcoreset.selection import RS2Selector

    labels = torch.arange(40) % 2  # two classes of 20
    sel = RS2Selector(0.25, seed=3)
    gen = torch.Generator().manual_seed(0)
    rounds = [sel.select(None, labels, gen, round_index=r) for r in range(5)]
    for c in (0, 1):
        members = [set(r.indices[labels[r.indices] == c].tolist()) for r in rounds]
        assert all(len(m) == 5 for m in members)
        assert set().union(*members[:4]) == set(range(c, 40, 2))  # 4 rounds x 5 = the whole class, once each
    assert all(torch.equal(r.weights, torch.full((10,), 4.0)) for r in rounds)  # n_c / k: unbiased sums
    assert not torch.equal(rounds[0].indices, rounds[4].indices)  # cycle 2 is a fresh permutation
    again = RS2Selector(0.25, seed=3).select(None, labels, torch.Generator().manual_seed(99), round_index=2)
    assert torch.equal(again.indices, rounds[2].indices)  # not drawn from the run generator: resumable
    assert not torch.equal(RS2Selector(0.25, seed=4).select(None, labels, gen, round_index=2).indices,
                           rounds[2].indices)
    odd = RS2Selector(0.3, seed=0)  # class of 10, k = 3: round 3 straddles two permutations
    picks = [odd.class_round(10, 0, r) for r in range(4)]
    assert all(p.numel() == 3 and p.unique().numel() == 3 for p in picks)
    assert set(torch.cat(picks[:3]).tolist()) | set(picks[3].tolist()) == set(range(10))
    assert len(set(torch.cat(picks[:3]).tolist())) == 9


def test_rs2_in_the_loader_draws_a_new_subset_each_epoch_and_resumes(tmp_path) -> None:
    from advcoreset.config import ConfigError
    from advcoreset.config_checks import load_config
    from advcoreset.training import Trainer

    cfg = load_config(None, ["data.name=digits", "data.test_subset=100", "selection.method=rs2",
                             "selection.fraction=0.25", "selection.warm_epochs=0", "selection.interval=1",
                             "optim.epochs=4", "progress=none", f"out_dir={tmp_path / 'a'}"])
    t = Trainer(cfg)
    chosen = []
    for _ in range(4):
        assert t.loader.start_epoch() is not None
        chosen.append(set(t.loader.indices.tolist()))
        t.loader.end_epoch()
    # disjoint within a cycle (3 rounds of ceil(n_c / 4) fit in every class; the 4th may straddle)
    assert all(not (a & b) for i, a in enumerate(chosen[:3]) for b in chosen[i + 1:3])
    assert chosen[3] != chosen[0]
    resumed = Trainer(cfg.with_overrides([f"out_dir={tmp_path / 'b'}"]))
    resumed.loader.load_state_dict({"epoch": 2, "coreset": None})
    resumed.loader.start_epoch()
    assert set(resumed.loader.indices.tolist()) == chosen[2]
    with pytest.raises(ConfigError, match="selection.interval.*must be 1 for selection.method rs2"):
        load_config(None, ["selection.method=rs2", "selection.interval=4"])


def test_effective_size_is_kish_and_every_round_logs_it(tmp_path) -> None:
    from advcoreset.coreset.select import effective_size

    assert effective_size(torch.ones(7)) == pytest.approx(7.0)
    assert effective_size(torch.tensor([1.0, 3.0])) == pytest.approx(16 / 10)
    assert effective_size(torch.tensor([100.0, 1e-6, 1e-6])) == pytest.approx(1.0, abs=1e-6)
    from advcoreset.config_checks import load_config
    from advcoreset.training import train

    train(load_config(None, ["data.name=digits", "data.test_subset=50", "model.width=8", "selection.method=craig",
                             "selection.warm_epochs=0", "selection.interval=1", "optim.epochs=1",
                             "objective.attack.steps=1", "eval.pgd_steps=1", "progress=none",
                             f"out_dir={tmp_path / 'r'}"]))
    recs = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    sel = [r for r in recs if r["kind"] == "selection"]
    assert sel and 1 <= sel[0]["effective_size"] <= sel[0]["coreset_size"]


def test_pool_then_match_attacks_only_the_pool_and_weights_stand_for_the_class() -> None:
    """The pool is min(1, m x fraction) of every class, fresh each round (disjoint while the classes last);
    the selector keeps the class's budget, chosen inside the pool; the gradient pass reads the pool only;
    each class's weights are scaled from the pool to the class (CRAIG's sum to n_c exactly)."""
    from torch.utils.data import TensorDataset

    from advcoreset.coreset.select import Pool, select_coreset
    from advcoreset.selection import CraigSelector, class_budget

    labels = torch.arange(60) % 3  # 3 classes of 20
    pool = Pool(2.0, seed=1)
    p0, inner = pool.draw(labels, 0, CraigSelector(0.2))
    p1, _ = pool.draw(labels, 1, CraigSelector(0.2))
    assert p0.numel() == 3 * class_budget(0.4, 20) == 24 and not set(p0.tolist()) & set(p1.tolist())
    assert inner.fraction == pytest.approx(0.5)  # 4 of a pool of 8 = 0.2 of the class
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 4, 4, generator=g)
    ds = TensorDataset(x, labels)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    read: list[int] = []
    idx, w, stats = select_coreset(model, _Counting(ds, read), "pgd", method="craig", fraction=0.2, pool=2.0,
                                   batch_size=8, seed=1)
    assert stats["pool_size"] == 24 and stats["grad_error_of"] == "pool"
    assert set(idx.tolist()) <= set(p0.tolist()) and idx.numel() == 3 * class_budget(0.2, 20)
    pass_reads = read[-24:]  # the gradient pass comes last, after the dry-run reads of the first items
    assert sorted(pass_reads) == sorted(p0.tolist()) and len(read) < 60  # the pool only, not the 60
    for c in range(3):
        assert float(w[labels[idx] == c].sum()) == pytest.approx(20.0)


class _Counting(torch.utils.data.Dataset):
    """A dataset that records which items were read."""

    def __init__(self, base, log: list[int]) -> None:
        self.base, self.log = base, log
        self.targets = base.tensors[1]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        self.log.append(int(i))
        return self.base[i]


def test_pool_is_refused_where_it_cannot_apply() -> None:
    from advcoreset.config import ConfigError
    from advcoreset.config_checks import load_config

    with pytest.raises(ConfigError, match="selection.pool.*applies to craig and gradmatch only"):
        load_config(None, ["selection.method=random", "selection.pool=2"])
    with pytest.raises(ConfigError, match="selection.pool.*>= 1"):
        load_config(None, ["selection.method=gradmatch", "selection.pool=0.5"])
    assert load_config(None, ["selection.method=gradmatch", "selection.pool=2",
                              "selection.interval=1"]).selection.pool == 2.0


def test_a_run_with_a_pool_rematches_every_epoch_inside_fresh_pools(tmp_path) -> None:
    from advcoreset.config_checks import load_config
    from advcoreset.training import train

    train(load_config(None, ["data.name=digits", "data.test_subset=50", "model.width=8",
                             "selection.method=gradmatch", "selection.pool=2", "selection.warm_epochs=0",
                             "selection.interval=1", "optim.epochs=2", "objective.attack.steps=1",
                             "eval.pgd_steps=1", "progress=none", f"out_dir={tmp_path / 'r'}"]))
    recs = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    sel = [r for r in recs if r["kind"] == "selection"]
    assert [r["epoch"] for r in sel] == [1, 2] and all(r["grad_error_of"] == "pool" for r in sel)
    assert all(r["coreset_size"] < r["pool_size"] < r["train_size"] for r in sel)
