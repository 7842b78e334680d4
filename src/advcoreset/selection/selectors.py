"""Selectors: per-class coresets behind the one ``Selector`` interface, built by name from a config.

Every selector works class by class: class c with n_c examples gets exactly budget_c = ceil(fraction * n_c)
of them (all of them when that is >= n_c), chosen among its own examples only. Returned indices are
positions 0..n-1 into the ``labels`` given, sorted ascending, with weights aligned. Weights are > 0 and
meant to be used as sum_j w_j loss_j / sum_j w_j over an epoch (the trainer's normalisation).

- ``full``: every example, weight 1.
- ``random``: a fresh uniform subset per class at every call (from the trainer's generator), weight
  n_c / budget_c, so sum_j w_j g_j is an unbiased estimate of the class's gradient sum and the weights
  of a class sum to n_c.
- ``random_fixed``: the same as ``random`` but drawn once from a generator seeded with the selector's own
  seed, hence identical at every call: the paper's (and the official code's) fixed random baseline.
- ``rs2``: a uniform subset per class at every round, without replacement across rounds (``RS2Selector``).
- ``craig``, ``gradmatch``: the solvers of ``craig.py`` and ``gradmatch.py`` on the class's gradients.

Batch-wise selection (``batchwise=True``, CRAIG and GradMatch): the examples of a class are split, in one
fixed random order (seeded by the selector's seed, the same at every call), into mini-batches of
``selection_batch_size`` (the last one may be smaller); the solver runs on the batch-mean gradients
m_b with budget ceil(fraction * n_batches) and whole batches are chosen. With B = n_c / n_batches the mean
batch size, a batch b "counts" |b| / B batch units, so sum_i g_i = B * sum_b (|b|/B) m_b. CRAIG weighs
its facility-location points by |b| / B; GradMatch matches the target sum_b (|b|/B) m_b. A chosen batch
of solver weight w_b (in batch units) gives each of its members the weight w_b * B / |b|, so that

    sum_{members i} w_i g_i = B * sum_b w_b m_b  ~  sum_i g_i,

and, for CRAIG, the weights of a class sum to n_c exactly. (The official code gives every member its
batch's weight and then normalises the loss per batch, which cancels the weights; ours are used as they
are over the epoch.) ``random``, ``random_fixed`` and ``full`` always select single examples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from advcoreset.config import SelectionConfig
from advcoreset.progress import Task
from advcoreset.registry import Registry
from advcoreset.selection.base import Selection, Selector, approximation_error
from advcoreset.selection.craig import craig
from advcoreset.selection.gradmatch import gradmatch_solve, ridge

SELECTORS: Registry[Selector] = Registry("selector")


def class_budget(fraction: float, n_c: int) -> int:
    """ceil(fraction * n_c), at least 1 and at most n_c for a non-empty class.

    The product is rounded to 9 decimals first so that binary fractions do not overshoot:
    0.3 * 10 = 3.0000000000000004 in floating point, which must give 3, not 4."""
    if n_c <= 0:
        return 0
    return min(n_c, max(1, math.ceil(round(fraction * n_c, 9))))


def _check_inputs(grads: Tensor | None, labels: Tensor, name: str, needs_grads: bool) -> None:
    if labels.dim() != 1:
        raise ValueError(f"{name}: labels must be (n,), got shape {tuple(labels.shape)}")
    if needs_grads:
        if grads is None:
            raise ValueError(f"{name} needs per-example gradients, got grads=None")
        if grads.dim() != 2 or grads.shape[0] != labels.shape[0]:
            raise ValueError(f"{name}: grads must be (n, d) with n = len(labels) = {labels.shape[0]}, "
                             f"got shape {tuple(grads.shape)}")
        # Column sums propagate NaN/inf and are cheaper than an elementwise pass over all n x d entries;
        # only when they are not finite (NaN/inf, or a huge finite overflow) is every entry checked.
        if not bool(torch.isfinite(grads.sum(0)).all()) and not bool(torch.isfinite(grads).all()):
            raise ValueError(f"{name}: the gradients contain NaN or inf (diverged model?)")


def _class_members(labels: Tensor) -> list[tuple[int, Tensor]]:
    """[(class, (n_c,) ascending positions)] for every class present, classes ascending."""
    lab = labels.detach().cpu()
    return [(int(c), torch.nonzero(lab == c).squeeze(1)) for c in torch.unique(lab).tolist()]


def _assemble(parts: list[tuple[Tensor, Tensor]], device: torch.device, stats: dict[str, Any]) -> Selection:
    """Concatenate per-class (positions, weights) on the CPU, sort by position, move to ``device``."""
    if parts:
        idx = torch.cat([p[0].cpu().long() for p in parts])
        w = torch.cat([p[1].cpu().float() for p in parts])
    else:
        idx, w = torch.empty(0, dtype=torch.int64), torch.empty(0)
    order = torch.argsort(idx)
    return Selection(idx[order].to(device), w[order].to(device), stats)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (None: unchanged), restoring the count afterwards. The
    solvers issue many small float64 operations, which extra threads can slow down rather than speed up
    (``benchmarks/selection_solver.py --threads``)."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class FullSelector:
    """Every example with weight 1 (plain full-data training)."""

    name = "full"
    needs_grads = False
    subset = False
    weight_rule = "batch"

    def select(self, grads: Tensor | None, labels: Tensor, generator: torch.Generator,
               progress: Task | None = None) -> Selection:
        _check_inputs(grads, labels, self.name, False)
        n = labels.shape[0]
        return Selection(torch.arange(n, device=labels.device), torch.ones(n, device=labels.device),
                         {"method": self.name, "solver_seconds": 0.0})


class RandomSelector:
    """Uniform per-class subsets, weight n_c / budget_c (unbiased gradient sum).

    ``fixed=False``: re-drawn at every call from the generator passed in. ``fixed=True``: drawn from a
    generator seeded with ``seed`` at every call, so the subset never changes (the fixed random baseline)."""

    needs_grads = False
    subset = True
    weight_rule = "batch"

    def __init__(self, fraction: float, fixed: bool = False, seed: int = 0) -> None:
        self.fraction = fraction
        self.fixed = fixed
        self.seed = seed
        self.name = "random_fixed" if fixed else "random"

    def select(self, grads: Tensor | None, labels: Tensor, generator: torch.Generator,
               progress: Task | None = None) -> Selection:
        _check_inputs(grads, labels, self.name, False)
        gen = torch.Generator().manual_seed(self.seed) if self.fixed else generator
        parts, per_class = [], {}
        for c, members in _class_members(labels):
            n_c = members.numel()
            k = class_budget(self.fraction, n_c)
            pick = torch.randperm(n_c, generator=gen, device=gen.device)[:k].cpu()
            parts.append((members[pick], torch.full((k,), n_c / k)))
            per_class[str(c)] = {"size": n_c, "budget": k}
        return _assemble(parts, labels.device, {"method": self.name, "solver_seconds": 0.0,
                                                 "classes": per_class})


class RS2Selector:
    """RS2 (Okanovic et al., ICLR 2024, "repeated sampling of random subsets"): at round r a uniform subset
    of each class, drawn *without replacement across rounds*, weight n_c / budget_c.

    Class c's examples are visited along a sequence of random permutations of the class (each seeded by
    the selector's seed, the class and the permutation's number); round r takes the next budget_c of
    them, so every example is trained once before any is trained twice. A round that straddles two
    permutations takes the rest of the old one, then the first examples of the new one not already taken
    (those skipped count as visited in the new permutation). Nothing is stored: round r's subset is
    recomputed from (seed, r), so it resumes exactly and is the same on every rank. Meant to run every
    epoch (``selection.interval: 1``) and needs no gradients, so a round costs nothing."""

    name = "rs2"
    needs_grads = False
    subset = True
    weight_rule = "batch"
    per_round = True
    """``select`` takes the ``round_index`` (rounds before this one) of the schedule."""

    def __init__(self, fraction: float, seed: int = 0) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.fraction, self.seed = fraction, seed

    def _perm(self, n_c: int, c: int, cycle: int) -> Tensor:
        key = ((self.seed * 1_000_003 + c) * 1_000_003 + cycle) % (2**63)
        return torch.randperm(n_c, generator=torch.Generator().manual_seed(key))

    def class_round(self, n_c: int, c: int, round_index: int) -> Tensor:
        """(budget_c,) positions within class c (0..n_c-1) chosen at round ``round_index``."""
        k = class_budget(self.fraction, n_c)
        cycle, perm, pos = 0, self._perm(n_c, c, 0), 0
        for _ in range(round_index + 1):
            take = perm[pos:pos + k]
            pos += take.numel()
            if take.numel() < k:  # the permutation ran out: continue in a new one, skipping what we hold
                cycle, perm = cycle + 1, self._perm(n_c, c, cycle + 1)
                fresh = perm[~torch.isin(perm, take)]
                extra = fresh[:k - take.numel()]
                pos = int((perm == extra[-1]).nonzero()) + 1 if extra.numel() else 0
                take = torch.cat([take, extra])
        return take

    def select(self, grads: Tensor | None, labels: Tensor, generator: torch.Generator,
               progress: Task | None = None, round_index: int = 0) -> Selection:
        _check_inputs(grads, labels, self.name, False)
        if round_index < 0:
            raise ValueError(f"round_index must be >= 0, got {round_index}")
        parts, per_class = [], {}
        for c, members in _class_members(labels):
            n_c = members.numel()
            pick = self.class_round(n_c, c, round_index)
            parts.append((members[pick], torch.full((pick.numel(),), n_c / pick.numel())))
            per_class[str(c)] = {"size": n_c, "budget": int(pick.numel())}
        return _assemble(parts, labels.device, {"method": self.name, "round": round_index, "solver_seconds": 0.0,
                                                 "classes": per_class})


class _SolverSelector:
    """Per-class (optionally batch-wise) selection with a gradient-based solver; subclasses define
    ``_solve(grads, budget, generator, unit_weights) -> (local indices, weights, extra stats)``.

    ``Selection.stats["classes"][str(c)]``: ``size`` (examples), ``budget`` (units the solver may choose:
    examples, or batches when batch-wise, then with ``n_batches``), ``selected`` (examples returned),
    ``approx_error`` (||sum g - sum w g|| / ||sum g|| over the class's examples) and solver diagnostics
    (GradMatch: ``residual``, ``filled``, ``steps``, ``dropped``)."""

    name = "solver"
    needs_grads = True
    subset = True
    weight_rule = "batch"
    weighted = True
    """``select`` takes ``point_weights`` and ``class_sizes`` (rows standing for several examples)."""

    def __init__(self, fraction: float, batchwise: bool = False, batch_size: int = 32, seed: int = 0,
                 solver_threads: int | None = None) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if batch_size < 1:
            raise ValueError(f"selection batch size must be >= 1, got {batch_size}")
        if solver_threads is not None and solver_threads < 1:
            raise ValueError(f"solver_threads must be >= 1 or None, got {solver_threads}")
        self.fraction = fraction
        self.batchwise = batchwise
        self.batch_size = batch_size
        self.seed = seed
        self.solver_threads = solver_threads
        """CPU threads the solver runs with (None: torch's current count); restored afterwards."""

    def _solve(self, grads: Tensor, budget: int, generator: torch.Generator,
               unit_weights: Tensor | None) -> tuple[Tensor, Tensor, dict[str, Any]]:
        raise NotImplementedError

    def select(self, grads: Tensor | None, labels: Tensor, generator: torch.Generator,
               progress: Task | None = None, *, point_weights: Tensor | None = None,
               class_sizes: Tensor | None = None) -> Selection:
        """``Selector.select``. ``point_weights``: (n,) how many examples each row stands for (proposals of an
        earlier round): CRAIG weighs its facility-location points by them, GradMatch matches sum_i u_i g_i;
        ``class_sizes``: (C,) how many examples each class stands for, of which its budget is ``fraction``
        (default: its rows). Batch-wise selection takes neither."""
        _check_inputs(grads, labels, self.name, True)
        assert grads is not None
        if self.batchwise and (point_weights is not None or class_sizes is not None):
            raise ValueError(f"{self.name}: batch-wise selection takes no point weights or class sizes")
        # The batch split is fixed across calls: its own generator, seeded by the selector's seed and
        # consumed class by class in ascending class order.
        batch_gen = torch.Generator().manual_seed(self.seed)
        parts: list[tuple[Tensor, Tensor]] = []
        per_class: dict[str, Any] = {}
        solver_seconds = 0.0
        for c, members in _class_members(labels):
            n_c = members.numel()
            g_c = grads[members.to(grads.device)]
            t0 = time.perf_counter()
            with torch_threads(self.solver_threads):
                if self.batchwise:
                    local, w, info = self._select_batches(g_c, generator, batch_gen)
                else:
                    k = class_budget(self.fraction, n_c if class_sizes is None else int(class_sizes[c]))
                    u = None if point_weights is None else point_weights[members.to(point_weights.device)]
                    local, w, solver_info = self._solve(g_c, k, generator, u)
                    info = {"budget": k, **solver_info}
            solver_seconds += time.perf_counter() - t0
            local = local.cpu()
            w = w.cpu().float()
            info = {"size": n_c, "selected": int(local.numel()), **info,
                    "approx_error": approximation_error(g_c, local.to(g_c.device), w.to(g_c.device))}
            per_class[str(c)] = info
            parts.append((members[local], w))
            if progress is not None:
                progress.update(1, note=f"class {c}: {info['selected']} of {n_c}")
        stats = {"method": self.name, "batchwise": self.batchwise, "solver_seconds": solver_seconds,
                 "classes": per_class}
        return _assemble(parts, labels.device, stats)

    def _select_batches(self, g_c: Tensor, generator: torch.Generator,
                        batch_gen: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Choose whole fixed mini-batches of one class; returns member positions within the class."""
        n_c = g_c.shape[0]
        order = torch.randperm(n_c, generator=batch_gen)
        n_b = math.ceil(n_c / self.batch_size)
        batch_of = torch.empty(n_c, dtype=torch.int64)
        batch_of[order] = torch.arange(n_c) // self.batch_size
        sizes = torch.bincount(batch_of, minlength=n_b).float()
        dev = g_c.device
        means = torch.zeros(n_b, g_c.shape[1], device=dev, dtype=torch.float32)
        means.index_add_(0, batch_of.to(dev), g_c.float())
        means /= sizes.to(dev).unsqueeze(1)
        mean_size = n_c / n_b
        units = sizes / mean_size  # |b| / B: how many "average batches" batch b counts for
        k_b = class_budget(self.fraction, n_b)
        chosen, w_b, info = self._solve(means, k_b, generator, units)
        chosen, w_b = chosen.cpu(), w_b.cpu().double()
        member_w = (w_b * mean_size / sizes.double()[chosen]).float()
        # Members of the chosen batches, each with its batch's per-member weight.
        slot = torch.full((n_b,), -1, dtype=torch.int64)
        slot[chosen] = torch.arange(chosen.numel())
        in_chosen = slot[batch_of] >= 0
        local = torch.nonzero(in_chosen).squeeze(1)
        info = {"n_batches": n_b, "budget": k_b, **info}
        return local, member_w[slot[batch_of[local]]], info


class CraigSelector(_SolverSelector):
    """CRAIG (facility location, lazy greedy) per class; weights are cluster sizes."""

    name = "craig"
    # Resampling measured better for CRAIG (configs/bench/targets_120_i10*.yaml, benchmarks/README.md): a
    # medoid can stand for a large share of its class, and drawing in proportion to the weights keeps such
    # points out of any single step's weighted mean.
    weight_rule = "resample"

    def __init__(self, fraction: float, batchwise: bool = False, batch_size: int = 32, seed: int = 0,
                 max_class_size: int = 20000, solver_threads: int | None = None) -> None:
        super().__init__(fraction, batchwise, batch_size, seed, solver_threads)
        self.max_class_size = max_class_size

    def _solve(self, grads: Tensor, budget: int, generator: torch.Generator,
               unit_weights: Tensor | None) -> tuple[Tensor, Tensor, dict[str, Any]]:
        idx, w = craig(grads, budget, max_size=self.max_class_size, generator=generator,
                       point_weights=None if unit_weights is None else unit_weights.to(grads.device))
        return idx, w, {"partitioned": grads.shape[0] > self.max_class_size}


class GradMatchSelector(_SolverSelector):
    """GradMatch (non-negative OMP with ridge NNLS weights) per class; reports the relative residual."""

    name = "gradmatch"

    def __init__(self, fraction: float, batchwise: bool = False, batch_size: int = 32, seed: int = 0,
                 lam: float = 0.5, tol: float = 0.0, lam_relative: bool = False,
                 solver_threads: int | None = None) -> None:
        super().__init__(fraction, batchwise, batch_size, seed, solver_threads)
        self.lam = lam
        self.tol = tol
        self.lam_relative = lam_relative
        """Scale ``lam`` by the class's mean squared gradient norm (``gradmatch.ridge``)."""

    def _solve(self, grads: Tensor, budget: int, generator: torch.Generator,
               unit_weights: Tensor | None) -> tuple[Tensor, Tensor, dict[str, Any]]:
        target = None
        if unit_weights is not None:
            target = (unit_weights.to(grads.device).unsqueeze(1) * grads.float()).sum(0)
        if budget >= grads.shape[0]:
            # Everything: weights that reproduce the target exactly (1 per example, |b|/B per batch).
            w = torch.ones(grads.shape[0]) if unit_weights is None else unit_weights.float().cpu()
            return torch.arange(grads.shape[0]), w, {"residual": 0.0, "filled": 0}
        lam = ridge(grads, self.lam, self.lam_relative)
        res = gradmatch_solve(grads, budget, lam=lam, tol=self.tol, generator=generator, target=target)
        return res.indices, res.weights, {"residual": res.residual, "filled": res.n_filled, "steps": res.steps,
                                          "dropped": res.dropped}


@SELECTORS.register("full")
def _full(cfg: SelectionConfig, seed: int) -> Selector:
    return FullSelector()


@SELECTORS.register("random")
def _random(cfg: SelectionConfig, seed: int) -> Selector:
    return RandomSelector(cfg.fraction, fixed=False, seed=seed)


@SELECTORS.register("random_fixed")
def _random_fixed(cfg: SelectionConfig, seed: int) -> Selector:
    return RandomSelector(cfg.fraction, fixed=True, seed=seed)


@SELECTORS.register("rs2")
def _rs2(cfg: SelectionConfig, seed: int) -> Selector:
    return RS2Selector(cfg.fraction, seed)


@SELECTORS.register("craig")
def _craig(cfg: SelectionConfig, seed: int) -> Selector:
    return CraigSelector(cfg.fraction, cfg.batchwise, cfg.selection_batch_size, seed, cfg.max_class_size,
                         cfg.solver_threads)


@SELECTORS.register("gradmatch")
def _gradmatch(cfg: SelectionConfig, seed: int) -> Selector:
    return GradMatchSelector(cfg.fraction, cfg.batchwise, cfg.selection_batch_size, seed, cfg.lam, cfg.tol,
                             cfg.lam_relative, cfg.solver_threads)


def available_selectors() -> list[str]:
    """Registered selector names: craig, full, gradmatch, random, random_fixed, rs2."""
    return SELECTORS.names()


def build_selector(cfg: SelectionConfig, seed: int) -> Selector:
    """The selector ``cfg.method`` names, configured from ``cfg`` (fraction, batchwise,
    selection_batch_size, lam, tol, max_class_size); ``seed`` fixes batch splits and random_fixed."""
    fn: Callable[..., Selector] = SELECTORS.get(cfg.method)
    return fn(cfg, seed)
