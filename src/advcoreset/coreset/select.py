"""One selection round: the selection attack's pass over the training set, then the selector.

``select_coreset`` is the one-call form for a user's model and Dataset; ``selection_gradients`` and
``run_selection`` are the pieces the coreset loader (and the benchmarks) use.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advcoreset.coreset.cache import PerturbationCache
from advcoreset.coreset.parts import resolve_selection_objective, resolve_selector
from advcoreset.data.sources import DataSource, as_source, check_label_range, random_states_kept
from advcoreset.models.adapter import LastLayer, last_layer
from advcoreset.objectives import Objective
from advcoreset.objectives.base import eval_mode
from advcoreset.progress import Reporter, reporter_or_silent
from advcoreset.selection import (
    RS2Selector,
    Selection,
    Selector,
    ShardedSelector,
    approximation_error,
    fraction_of,
    last_layer_grads,
    last_layer_grads_at,
    select_round,
)

Progress = Reporter
"""``advcoreset.progress`` reporter: ``progress(desc, total)`` opens a task (bar, line or silent) for the attack
pass (examples done) and the solver (classes done)."""
Autocast = Callable[[], AbstractContextManager[Any]]


def selection_gradients(model: nn.Module, objective: Objective, source: DataSource, batch_size: int, *,
                        features: str = "last_layer", layer: LastLayer | None = None,
                        autocast: Autocast | None = None, progress: Progress | None = None,
                        indices: Tensor | None = None, rows: tuple[int, int] | None = None,
                        times: dict[str, float] | None = None, cache: PerturbationCache | None = None) -> Tensor:
    """(n, D) last-layer gradients of ``objective`` at its adversarial points for every example of
    ``source`` (or only those at ``indices`` (k,), in that order, or in the row range ``rows`` = [start, stop):
    a rank's share of the pass), on the very pixels the attack ran on (no augmentation), in index order. The
    batch size is the training batch, so per image the pass costs what the training attack costs. ``times``: add
    the attack's and the gradients' seconds to ``times["attack"]`` and ``times["gradient"]`` (timed apart, with a
    device sync after each). ``cache``: take the gradients at each example's cached perturbation instead
    (``PerturbationCache``), attacking only the examples it does not know."""
    if rows is not None:
        indices = torch.arange(*rows)
    n = len(source) if indices is None else int(indices.numel())
    layer = layer or last_layer(model, source.sample())
    grads: Tensor | None = None
    done = 0
    task = reporter_or_silent(progress)("selection: attack pass + last-layer gradients", n)
    batches = source.ordered(batch_size) if indices is None else source.ordered_at(indices, batch_size)
    for x, y in batches:
        with autocast() if autocast is not None else nullcontext():
            if cache is not None:
                at = torch.arange(done, done + x.shape[0]) if indices is None else indices[done:done + x.shape[0]]
                g = _cached_grads(model, objective, x, y, at, cache, features, layer)
            elif times is None:
                g = last_layer_grads(model, objective, x, y, features, layer)
            else:
                g = _timed_grads(model, objective, x, y, features, layer, times)
        if grads is None:
            # One (n, D) buffer: keeping every chunk alive until a final cat interleaved live blocks with the
            # attack's temporaries in the CPU heap, and the pass slowed down as it went.
            grads = torch.empty((n, g.shape[1]), dtype=g.dtype, device=g.device)
        grads[done:done + g.shape[0]] = g
        done += g.shape[0]
        task.update(g.shape[0])
    task.close()
    if grads is None:
        raise ValueError("selection needs at least one training image, the training set is empty")
    if grads.is_cuda:
        torch.cuda.synchronize()
    return grads


def _cached_grads(model: nn.Module, objective: Objective, x: Tensor, y: Tensor, at: Tensor,
                  cache: PerturbationCache, features: str, layer: LastLayer) -> Tensor:
    """(B, D) last-layer gradients of the examples ``at`` (B,) (x (B, C, H, W), y (B,)) at their cached
    perturbations; the examples without one are attacked (only they)."""
    x_adv = cache.points(at, x)
    fresh = (~cache.known_at(at)).nonzero().flatten()  # on the host: no device sync
    if fresh.numel():
        fresh = fresh.to(x.device, non_blocking=True)
        with eval_mode(model):
            x_fresh = objective.attack(model, x.index_select(0, fresh), y.index_select(0, fresh))
        x_adv.index_copy_(0, fresh, x_fresh.to(x_adv.dtype))
    return last_layer_grads_at(model, objective, x, x_adv, y, features, layer)


def _timed_grads(model: nn.Module, objective: Objective, x: Tensor, y: Tensor, features: str, layer: LastLayer,
                 times: dict[str, float]) -> Tensor:
    """``last_layer_grads`` of the batch (x (B, C, H, W), y (B,)) -> (B, D), the attack's and the gradients'
    seconds added to ``times`` (a device sync after each, so the seconds are theirs)."""
    t0 = time.perf_counter()
    with eval_mode(model):
        x_adv = objective.attack(model, x, y)
    if x.is_cuda:
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    g = last_layer_grads_at(model, objective, x, x_adv, y, features, layer)
    if x.is_cuda:
        torch.cuda.synchronize()
    times["attack"] += t1 - t0
    times["gradient"] += time.perf_counter() - t1
    return g


def run_selection(selector: Selector, model: nn.Module, objective: Objective, source: DataSource,
                  generator: torch.Generator, *, batch_size: int, features: str = "last_layer",
                  layer: LastLayer | None = None, autocast: Autocast | None = None,
                  progress: Progress | None = None, num_classes: int | None = None, round_index: int = 0,
                  measure_error: bool = False, pool: Pool | None = None,
                  cache: PerturbationCache | None = None) -> tuple[Selection, dict[str, Any]]:
    """Choose a weighted coreset of ``source``; returns it and its JSON-serialisable statistics (size, class
    histogram, weight sum, attack and solver seconds, relative gradient error, solver diagnostics).

    ``measure_error``: also take the gradient pass for a selector that needs none (random, rs2), so that
    ``grad_error`` is reported for it too; that pass's seconds are ``time_error_pass``, not selection time,
    and it leaves the random streams (Python, NumPy, torch's CPU and the device's) as it found them.
    ``pool``: a gradient selector attacks and matches only inside this round's random pool (``Pool``); its
    ``grad_error`` is then the error against the pool's gradient sum. A ``ShardedSelector``: the pass covers this
    rank's rows only (``rows``), and the round reports its own error, bytes and seconds (``Selection.record``).
    ``cache``: the gradients are taken at the examples' cached perturbations (``selection.points: cached``); the
    round records ``points`` and ``cached_share``, the share of the pass served from the cache."""
    labels = source.labels
    t0 = time.perf_counter()
    at = None
    if pool is not None and selector.needs_grads:
        at, selector = pool.draw(labels, round_index, selector)
    sharded = selector if isinstance(selector, ShardedSelector) else None
    rows = None if sharded is None else sharded.rows(len(source))
    times = {"attack": 0.0, "gradient": 0.0}
    with eval_mode(model):
        grads = selection_gradients(model, objective, source, batch_size, features=features, layer=layer,
                                    autocast=autocast, progress=progress, indices=at, rows=rows,
                                    times=None if sharded is None else times,
                                    cache=cache) if selector.needs_grads else None
    t1 = time.perf_counter()
    error_grads, t_error = grads, 0.0
    if grads is None and measure_error:  # a measurement only: the run's random streams go on as without it
        with eval_mode(model), random_states_kept(labels.device):
            error_grads = selection_gradients(model, objective, source, batch_size, features=features,
                                              layer=layer, autocast=autocast, progress=progress)
        t_error = time.perf_counter() - t1
        t1 = time.perf_counter()
    seen = labels if at is None else labels[at.to(labels.device)]
    with reporter_or_silent(progress)(f"selection: {selector.name} solver", _n_classes(labels)) as task:
        sel = select_round(selector, grads, seen, generator, progress=task, round_index=round_index)
        task.write(f"selection: {selector.name} solver: {int(sel.indices.numel())} of {seen.numel()} chosen")
    if sel.indices.is_cuda:
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    if "grad_error" in sel.record:
        error = sel.record["grad_error"]
    else:
        error = approximation_error(error_grads, sel.indices, sel.weights) if error_grads is not None else None
    if at is not None:
        sel = from_pool(sel, at, labels)
    stats = _stats(selector, sel, labels, num_classes, t1 - t0 - t_error, t2 - t1, error)
    if at is not None:
        stats.update(pool_size=int(at.numel()), grad_error_of="pool")
    if cache is not None and grads is not None:
        known = cache.known if at is None else cache.known_at(at)
        stats.update(points="cached", cached_share=float(known.float().mean()))
    if t_error:
        stats["time_error_pass"] = t_error
    if sharded is not None:  # a sharded round: its own fields, this rank's seconds split by kind
        stats.update({"world_size": sharded.world.world_size, **sel.record, "time_selection_solver": t2 - t1,
                      "time_selection_split": {**times, **sel.record.get("time_selection_split", {})}})
    return sel, stats


def _stats(selector: Selector, sel: Selection, labels: Tensor, num_classes: int | None, attack_s: float,
           solver_s: float, error: float | None) -> dict[str, Any]:
    """The selection record of a round that chose ``sel`` among ``labels`` (N,)."""
    k = num_classes if num_classes is not None else int(labels.max()) + 1
    return {
        "method": selector.name, "batchwise": bool(getattr(selector, "batchwise", False)),
        "coreset_size": int(sel.indices.numel()), "train_size": int(labels.numel()),
        "class_histogram": torch.bincount(labels[sel.indices], minlength=k).tolist(),
        "weight_sum": float(sel.weights.sum()),
        "effective_size": effective_size(sel.weights),
        "time_selection_attack": attack_s, "time_selection_solver": solver_s,
        "grad_error": error, "solver_stats": sel.stats,
    }


def measures_error(setting: bool | str, selector: Selector) -> bool:
    """Whether the rounds of ``selector`` take the gradient pass for ``grad_error`` (``selection.measure_error``):
    True / False as given; auto: for a gradient-free subset selector whose rounds come every ``interval``
    epochs (random), not for one that draws a new subset every round by design (rs2, ``per_round``)."""
    if setting == "auto":
        return bool(selector.subset and not selector.needs_grads and not getattr(selector, "per_round", False))
    if setting is True or setting is False:
        return setting
    raise ValueError(f"measure_error must be 'auto', True or False, got {setting!r}")


POOL_IN_ONE_PROCESS = ("pool runs in one process for now (a pool drawn per rank is not written yet): pass the "
                       "selector unwrapped, or pool=None under torchrun")


@dataclass(frozen=True)
class Pool:
    """Pool-then-match (the CREST idea, Yang et al., ICML 2023): each round draws per class a fresh random
    pool of ``multiple`` x the class's budget, without replacement across rounds (as RS2), and the selector
    attacks and matches inside it only, so a round costs in proportion to the pool."""

    multiple: float
    seed: int = 0

    def draw(self, labels: Tensor, round_index: int, selector: Selector) -> tuple[Tensor, Selector]:
        """Round ``round_index``'s pool: (p,) ascending positions, min(1, multiple x fraction) of every class,
        and a copy of ``selector`` whose fraction of the pool is its budget (``fraction`` of the class)."""
        if isinstance(selector, ShardedSelector):
            raise ValueError(POOL_IN_ONE_PROCESS)
        fraction = fraction_of(selector)
        share = min(1.0, self.multiple * fraction)
        pool = RS2Selector(share, self.seed).select(None, labels.cpu(), torch.Generator(), round_index=round_index)
        inner = copy.copy(selector)
        inner.fraction = min(1.0, fraction / share)  # type: ignore[attr-defined]
        return pool.indices, inner


def from_pool(sel: Selection, pool: Tensor, labels: Tensor) -> Selection:
    """A selection made among ``pool`` (positions into it) as positions into the whole set, each class's
    weights scaled by n_c / pool_c so that they stand for the class (sum n_c), not only for its pool."""
    idx = pool.to(sel.indices.device)[sel.indices]
    lab = labels.to(idx.device)
    n_c = torch.bincount(lab, minlength=int(lab.max()) + 1).double()
    p_c = torch.bincount(lab[pool.to(idx.device)], minlength=n_c.numel()).double()
    scale = (n_c / p_c.clamp_min(1))[lab[idx]]
    order = torch.argsort(idx)
    return Selection(idx[order], (sel.weights.double() * scale)[order].float(), sel.stats)


def effective_size(weights: Tensor) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of (k,) weights: k for uniform weights, near 1 when
    one weight dominates (how many points a weighted coreset is really worth to a gradient step)."""
    w = weights.double()
    return float(w.sum() ** 2 / (w * w).sum()) if w.numel() else 0.0


def select_coreset(model: nn.Module, dataset: Any, objective: str | Objective = "pgd", *,
                   method: str | Selector = "gradmatch", fraction: float = 0.3, batch_size: int = 128,
                   features: str = "last_layer", seed: int = 0, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None, progress: Progress | None = None,
                   objective_options: dict[str, Any] | None = None, selection_dataset: Any = None,
                   attack_steps: int | None = None, attack_alpha: float | None = None, pool: float | None = None,
                   keys: Sequence[str] | None = None, **selector_options: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Choose a weighted adversarial coreset of ``dataset`` for ``model`` in one call.

    Args:
        model: any classifier mapping (B, C, H, W) in [0, 1] to logits; its final nn.Linear is found and
            checked on a sample batch first.
        dataset: a map-style Dataset of (image (C, H, W) uint8 or float in [0, 1], int label), streamed in
            batches of ``batch_size`` (never held as one tensor), or a ``DataSource``.
        objective: a name (pgd, trades, fast, nfgsm, pat, standard) with default settings, changed by
            ``objective_options`` (e.g. ``{"eps": 8 / 255}``) and attacking with ``attack_steps`` (default 1,
            as ``train()``) of ``attack_alpha`` (default 2.5 eps / steps); or an Objective, used as it is.
        method, fraction: the selector (name or object) and the share of every class to keep;
            ``selector_options``: batchwise, selection_batch_size, lam, tol, max_class_size.
        generator: randomness of the selector (default: seeded with ``seed``).
        device: where the pass runs (default: the model's device).
        selection_dataset: ``dataset`` without its random augmentation (same items and order): what the pass
            reads; default ``dataset`` itself.
        pool: pool-then-match (``Pool``): attack and match only inside a random pool of ``pool`` x the budget.
        keys: (image key, label key) when the items are dicts (Hugging Face ``datasets`` style, ``data.keyed``).

    Returns:
        indices (k,) int64 positions into ``dataset``, ascending; weights (k,) float32 > 0; stats (see
        :func:`run_selection`; ``grad_error`` for every method: a selector without gradients, such as
        random, gets the gradient pass too, timed as ``time_error_pass``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_batch_size(batch_size)
    dev = device if device is not None else next(model.parameters()).device
    source = as_source(dataset, dev, keys=keys,
                       **({} if selection_dataset is None else {"selection_view": selection_dataset}))
    obj = resolve_selection_objective(objective, objective_options, attack_steps, attack_alpha)
    selector = resolve_selector(method, fraction, seed, **selector_options)
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    layer = last_layer(model, source.sample())
    check_label_range(source, layer.linear.out_features)
    sel, stats = run_selection(selector, model, obj, source, gen, batch_size=batch_size, features=features,
                               layer=layer, progress=progress, measure_error=True,
                               pool=None if pool is None else Pool(float(pool), seed))
    return sel.indices, sel.weights, stats


def check_batch_size(batch_size: Any) -> None:
    """A TypeError unless ``batch_size`` is an int, a ValueError unless it is >= 1; each naming it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an integer >= 1, got {type(batch_size).__name__} {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")


def _n_classes(labels: Tensor) -> int:
    return int(torch.unique(labels).numel())
