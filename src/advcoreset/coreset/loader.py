"""The adversarial coreset as a data loader: warm start, re-selection every R epochs, weights, resume.

A training loop of one's own::

    loader = CoresetLoader(train_set, model, "pgd", method="craig", fraction=0.3, warm_epochs=1, interval=2,
                           num_workers=4, pin_memory=True)     # any DataLoader argument passes through
    for epoch in range(epochs):
        for x, y, w in loader:                 # one epoch of the current coreset (all data while warm)
            x_adv = objective.attack(model, x, y)
            loss = (w * F.cross_entropy(model(x_adv), y, reduction="none")).sum() / w.sum()
            ...

Weight rules (``weight_rule``; default: the selector's own, CRAIG ``resample``, every other ``batch``):

- ``batch``: use ``w`` as given, normalised per mini-batch (sum_j w_j l_j / sum_j w_j).
- ``epoch``: normalise by ``B * mean weight of the epoch`` instead: pass ``loader.loss_norm(batch)`` as the
  objective's ``norm``.
- ``resample``: every epoch draws as many points as the coreset holds, with replacement and in proportion
  to the weights, and yields them with unit weights.

Underneath is plain ``torch.utils.data``: ``loader.sampler`` is a ``CoresetSampler`` (the current coreset's
order, weights, ``set_epoch``, a ``rank, world`` split) and ``loader.dataloader`` a ``DataLoader`` over it
(workers, pinning, collation); each fetched batch is paired with its weights in order.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from advcoreset.config import POINTS, RESTS, WARM_STARTS
from advcoreset.coreset.cache import PerturbationCache
from advcoreset.coreset.parts import SELECTOR_OPTIONS, resolve_selection_objective, resolve_selector
from advcoreset.coreset.sampler import WEIGHT_RULES, CoresetBatches, CoresetSampler
from advcoreset.coreset.select import (
    POOL_IN_ONE_PROCESS,
    Autocast,
    Pool,
    Progress,
    check_batch_size,
    measures_error,
    run_selection,
    selection_gradients,
)
from advcoreset.data.datasets import DataError
from advcoreset.data.loader import Batch
from advcoreset.data.sources import TensorSource, as_source, check_label_range, collate_items, fetched
from advcoreset.models.adapter import last_layer
from advcoreset.objectives import Objective
from advcoreset.objectives.lp import Standard
from advcoreset.selection import RS2Selector, Selection, Selector, ShardedSelector, fraction_of

__all__ = ["DATALOADER_OPTIONS", "RESTS", "WARM_STARTS", "WEIGHT_RULES", "CoresetLoader"]

_OWN = {"self", "dataset", "batch_size", "shuffle", "sampler", "batch_sampler", "drop_last", "generator"}
DATALOADER_OPTIONS = tuple(p for p in inspect.signature(DataLoader.__init__).parameters if p not in _OWN)
"""``DataLoader`` arguments a ``CoresetLoader`` passes through as they are (num_workers, collate_fn,
pin_memory, timeout, worker_init_fn, multiprocessing_context, prefetch_factor, persistent_workers, ...)."""


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` as (DataLoader arguments, selector options); an unknown name, or a DataLoader argument the
    coreset decides itself (sampler, batch_sampler, in_order=False), is a ValueError naming it."""
    own = {"sampler", "batch_sampler"} & set(options)
    if own or options.get("in_order") is False:
        raise ValueError(f"{sorted(own) or ['in_order=False']}: the coreset decides which examples and in which "
                         "order (loader.sampler, a CoresetSampler); batches come back in that order")
    unknown = set(options) - set(DATALOADER_OPTIONS) - SELECTOR_OPTIONS
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; DataLoader arguments: {list(DATALOADER_OPTIONS)}; "
                         f"selector options: {sorted(SELECTOR_OPTIONS)}")
    loader = {k: v for k, v in options.items() if k in DATALOADER_OPTIONS}
    return loader, {k: v for k, v in options.items() if k not in loader}


def _check_loader_options(source: Any, options: dict[str, Any]) -> None:
    """A ValueError for worker processes or pinning of an in-memory source that lives on an accelerator."""
    if isinstance(source, TensorSource) and source.images.device.type != "cpu" and (
            options.get("num_workers") or options.get("pin_memory")):
        raise ValueError(f"the in-memory training set already lives on {source.images.device}: num_workers and "
                         "pin_memory apply to a Dataset read from the host; leave them out")


def _pair(out: Any) -> tuple[Tensor, Tensor]:
    """A collated batch as (x, y); a ``collate_fn`` that returns something else is named."""
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], Tensor):
        return out[0], torch.as_tensor(out[1])
    raise DataError(f"a training batch must collate to (images (B, C, H, W), labels (B,)), got "
                    f"{type(out).__name__}: a collate_fn must return that pair (the loader adds the weights)")


class CoresetLoader:
    """Iterating gives one epoch of (x, y, w) batches (:class:`~advcoreset.data.loader.Batch`) from the
    current coreset, re-selecting first when the schedule says so.

    Args:
        dataset: a map-style Dataset of (image (C, H, W) uint8 or float in [0, 1], int label) (dict items:
            ``keys``), or a data source (``advcoreset.data.sources``).
        model: the model being trained (its final nn.Linear is found and checked on a sample batch now).
        objective: the selection objective: a name (pgd, trades, fast, nfgsm, pat, standard) with defaults
            changed by ``objective_options``, attacking with ``attack_steps`` (default 1, as ``train()``) of
            ``attack_alpha`` (default 2.5 eps / steps); or an Objective, used as it is.
        method, fraction: the selector (name or object) and the share of every class kept.
        warm_epochs, interval: epochs on all data first, then a new coreset every ``interval`` epochs.
        rest: what the examples outside the coreset do in a coreset epoch (``selection.rest``): ``drop`` (they
            are left out, the coreset's weights stand for them) or, as BulletTrain allocates the attack (Hua et
            al., NeurIPS 2021), they train too, at a cheaper point: ``clean`` or ``selection_attack`` (the
            selection objective's, 1-step by default; ``loader.rest_objective``). Every example then trains
            once per epoch with weight 1, the members with their coreset weights scaled to a mean of 1 in each
            class, and ``Batch.strong`` marks the members (the training attack's examples).
        warm_start: what the warm epochs train on (``selection.warm_start``): ``full`` (all data) or ``rs2``: a
            fresh uniform ``fraction`` of every class each warm epoch, without replacement across them (RS2's
            draw, seeded by ``seed``), so a warm epoch costs what a coreset epoch costs.
        weight_rule: batch, epoch or resample; None = the selector's default.
        batch_size: training batches (this rank's) and the selection pass's batches.
        generator: order, augmentation, resampling and the selector's randomness (default: seeded by
            ``seed``); its state is part of ``state_dict``.
        progress: an ``advcoreset.progress`` reporter (``make_progress("line")``, ...): the selection pass
            reports examples done, the solver classes done; None: silent.
        selection_dataset: ``dataset`` without its random augmentation (same items, same order), read by the
            selection pass, so the coreset is chosen on the images rather than on augmented views.
        pool: pool-then-match (``advcoreset.coreset.select.Pool``): each round attacks and matches only inside
            a fresh random pool of ``pool`` x the budget per class; None: the whole set.
        keys: (image key, label key) for dict items (Hugging Face ``datasets`` style), ``data.keyed``.
        points: where a round takes its gradients (``selection.points``): ``attack`` (the selection attack's
            points) or ``cached``: each example's perturbation from the last time it was trained, which the loop
            hands over with ``loader.remember(batch, x_adv)`` after its attack (``coreset.cache``); examples
            without one are attacked. One process only for now.
        measure_error: auto, True or False (``selection.measure_error``): also take the gradient pass at the
            rounds of a gradient-free selector, so that ``stats["grad_error"]`` is set for it too (auto: for
            random, not for rs2); timed as ``time_error_pass``, drawing nothing from the random streams.
        shuffle, drop_last, rank, world: the ``CoresetSampler``'s (``loader.sampler``): a random order per
            epoch; the last short batch dropped; this rank's share of every epoch (every rank must hold the
            same coreset: same seed, model and random state when it is chosen, or a ``ShardedSelector``).
        split: how the ranks share an epoch (``CoresetBatches``): ``stride`` (``DistributedSampler``'s: each rank
            its own batches of ``batch_size``) or ``global_batch`` (each global batch of ``batch_size`` drawn and
            augmented as one process does, each rank its contiguous slice; ``loss_norm`` then makes DDP's
            average of the ranks' gradients one process's step: the trainer's).
        **options: ``DataLoader`` arguments (``DATALOADER_OPTIONS``: num_workers, pin_memory, collate_fn,
            persistent_workers, prefetch_factor, worker_init_fn, ...), passed through as they are (a
            ``collate_fn`` gets (image, label) items and returns (x, y); ``num_workers`` also reads the
            selection pass of a Dataset); and selector options (batchwise, selection_batch_size, lam, tol,
            max_class_size).
    """

    def __init__(self, dataset: Any, model: nn.Module, objective: str | Objective = "pgd", *,
                 method: str | Selector = "gradmatch", fraction: float = 0.3, warm_epochs: int = 1, interval: int = 4,
                 weight_rule: str | None = None, batch_size: int = 128, grad_features: str = "last_layer",
                 seed: int = 0, generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 progress: Progress | None = None, autocast: Autocast | None = None, num_classes: int | None = None,
                 objective_options: dict[str, Any] | None = None, selection_dataset: Any = None,
                 attack_steps: int | None = None, attack_alpha: float | None = None, pool: float | None = None,
                 keys: Sequence[str] | None = None, shuffle: bool = True, drop_last: bool = False, rank: int = 0,
                 world: int = 1, split: str = "stride", measure_error: bool | str = "auto", points: str = "attack",
                 warm_start: str = "full", rest: str = "drop", **options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_batch_size(batch_size)
        if warm_epochs < 0 or interval < 1 or batch_size < 1:
            raise ValueError(f"need warm_epochs >= 0, interval >= 1 and batch_size >= 1, got {warm_epochs}, "
                             f"{interval} and {batch_size}")
        loader_options, selector_options = split_options(options)
        self.selector = resolve_selector(method, fraction, seed, **selector_options)
        if pool is not None and (pool < 1 or not self.selector.needs_grads):
            raise ValueError(f"pool must be >= 1 and needs a gradient selector (craig, gradmatch), got pool={pool} "
                             f"for {self.selector.name}")
        if pool is not None and isinstance(self.selector, ShardedSelector):
            raise ValueError(POOL_IN_ONE_PROCESS)
        self.pool = None if pool is None else Pool(float(pool), seed)
        if warm_start not in WARM_STARTS:
            raise ValueError(f"warm_start must be one of {WARM_STARTS}, got {warm_start!r}")
        self.warm_draw = RS2Selector(fraction_of(self.selector), seed) if warm_start == "rs2" else None
        """RS2's draw for the warm epochs (``warm_start='rs2'``), else None (all data)."""
        if points not in POINTS:
            raise ValueError(f"points must be one of {POINTS}, got {points!r}")
        if points == "cached" and world > 1:
            raise ValueError("points='cached' runs in one process for now (each rank would know only the "
                             "perturbations of its own batches): use points='attack' under torchrun")
        self.measure_error = measures_error(measure_error, self.selector)
        """Whether a gradient-free selector's rounds take the gradient pass for ``grad_error``."""
        if rest not in RESTS:
            raise ValueError(f"rest must be one of {RESTS}, got {rest!r}")
        # a member stands for itself beside the others, not for its class: no weighted resampling then
        rule = weight_rule or ("batch" if rest != "drop" else self.selector.weight_rule)
        if rule not in WEIGHT_RULES:
            raise ValueError(f"weight_rule must be one of {WEIGHT_RULES} or None, got {rule!r}")
        if rest != "drop" and rule == "resample":
            raise ValueError(f"rest={rest!r} trains every example once an epoch: it needs weight_rule 'batch' or "
                             "'epoch', not 'resample'")
        self.rest = rest
        dev = device if device is not None else next(model.parameters()).device
        src_kw: dict[str, Any] = {"keys": keys, "num_workers": loader_options.get("num_workers") or 0}
        if selection_dataset is not None:
            src_kw["selection_view"] = selection_dataset
        self.dataset = dataset
        """The dataset as given (``loader.dataloader.dataset`` is what the DataLoader reads)."""
        self.source = as_source(dataset, dev, **src_kw)
        _check_loader_options(self.source, loader_options)
        self.model = model
        self.objective = resolve_selection_objective(objective, objective_options, attack_steps, attack_alpha)
        self.rest_objective: Objective | None = {"drop": None, "clean": Standard(),
                                                 "selection_attack": self.objective}[rest]
        """The attack of the examples outside the coreset in a coreset epoch (``rest``), else None."""
        self.layer = last_layer(model, self.source.sample())
        check_label_range(self.source, self.layer.linear.out_features)
        self.warm_epochs, self.interval, self.weight_rule = warm_epochs, interval, rule
        self.batch_size, self.grad_features, self.num_classes = batch_size, grad_features, num_classes
        self.progress, self.autocast = progress, autocast
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.sampler = CoresetSampler(len(self.source), weight_rule=rule, shuffle=shuffle, generator=self.generator,
                                      rank=rank, world=world, drop_last=drop_last)
        """The current coreset as a ``torch.utils.data.Sampler`` (this rank's share of each epoch)."""
        self.batch_sampler = CoresetBatches(self.sampler, batch_size, drop_last, split)
        self.cache = PerturbationCache(len(self.source), self.source.labels.device) if points == "cached" else None
        """The examples' last training perturbations (``points='cached'``), else None."""
        self.dataloader = self._dataloader(loader_options, seed)
        self._init_state()

    def _init_state(self) -> None:
        self.epoch = 0
        """Epochs completed."""
        self._started: int | None = None
        """The epoch whose ``start_epoch`` has run (its selection made), if it has not ended yet."""
        self._open = False
        """An iteration began an epoch that has not ended (the loop stopped early): the next one ends it."""
        self.selection: Selection | None = None
        self.stats: dict[str, Any] | None = None
        """The last selection's statistics (``run_selection``), with the epoch it was made for."""
        self._wbar: Tensor | None = None
        self._member: Tensor | None = None
        """(n,) bool coreset members of the epoch being iterated, when the rest trains too (``rest``)."""

    def _dataloader(self, options: dict[str, Any], seed: int) -> DataLoader[Any]:
        """The DataLoader over ``batch_sampler`` that fetches the epoch's batches, with the caller's arguments."""
        src = self.source
        # A DataLoader iterator draws its workers' base seed from its generator (torch's global one by default).
        # The in-memory source's epochs drew nothing from the global stream, which the attacks' random starts
        # use, and a Dataset's epochs drew that one seed: each keeps its stream.
        gen = torch.Generator().manual_seed(seed) if isinstance(src, TensorSource) else None
        return DataLoader(src.items(), batch_sampler=self.batch_sampler, generator=gen,
                          **{"collate_fn": collate_items, **options})

    # ------------------------------------------------------------------ schedule
    def is_warm(self, epoch: int | None = None) -> bool:
        """True when ``epoch`` (0-based; default: the next) trains on all data."""
        e = self.epoch if epoch is None else epoch
        return not self.selector.subset or e < self.warm_epochs

    def selects_at(self, epoch: int | None = None) -> bool:
        """True when a new coreset is chosen at the start of ``epoch`` (0-based; default: the next)."""
        e = self.epoch if epoch is None else epoch
        return self.selector.subset and e >= self.warm_epochs and (e - self.warm_epochs) % self.interval == 0

    def _check_state(self, state: Any) -> None:
        n = len(self.source)
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int) or isinstance(state["epoch"], bool) \
                or state["epoch"] < 0:
            raise ValueError("not a CoresetLoader state: it needs an 'epoch' (int >= 0); give what state_dict() "
                             "returned")
        cs = state.get("coreset")
        if cs is not None:
            idx, w = (cs.get("indices"), cs.get("weights")) if isinstance(cs, dict) else (None, None)
            fits = (isinstance(idx, Tensor) and isinstance(w, Tensor) and idx.dim() == 1 and idx.shape == w.shape
                    and not idx.is_floating_point())
            if not fits or (isinstance(idx, Tensor) and idx.numel() and not 0 <= int(idx.min()) <= int(idx.max()) < n):
                raise ValueError(f"the state's coreset does not fit this loader's {n} examples (indices and weights "
                                 "of one length, indices in range): a state of another data set?")
        if self.cache is not None:
            if "cache" not in state:
                raise ValueError("the state has no perturbation cache, and this loader takes points='cached': a "
                                 "state of a loader with points='attack'?")
            self.cache.check_state(state["cache"])
        gen = state.get("generator")
        if gen is not None and not (isinstance(gen, Tensor) and gen.dtype == torch.uint8
                                    and gen.numel() == self.generator.get_state().numel()):
            raise ValueError("the state's generator state is not a torch.Generator state of this kind")

    def round_index(self, epoch: int | None = None) -> int:
        """Selection rounds before ``epoch`` (0-based; default: the next): the round a selection at its start is."""
        e = self.epoch if epoch is None else epoch
        return max(0, -(-(e - self.warm_epochs) // self.interval))

    @property
    def phase(self) -> str:
        """What the next epoch trains on: full (a selector that keeps everything), warm or coreset."""
        if not self.selector.subset:
            return "full"
        return "warm" if self.is_warm() or self.selection is None else "coreset"

    @property
    def indices(self) -> Tensor:
        """(k,) int64 positions the next epoch trains on (all of them while warm, or RS2's draw)."""
        return self._plan()[0]

    @property
    def weights(self) -> Tensor:
        """(k,) float32 weights aligned with ``indices`` (ones while warm)."""
        return self._plan()[1]

    def _plan(self) -> tuple[Tensor, Tensor]:
        phase, dev = self.phase, self.source.labels.device
        if phase == "coreset":
            assert self.selection is not None
            if self.rest_objective is not None:
                return self._allocated()[:2]
            return self.selection.indices, self.selection.weights
        if phase == "warm" and self.warm_draw is not None:  # recomputed from (seed, epoch): resumes exactly
            sel = self.warm_draw.select(None, self.source.labels.cpu(), torch.Generator(), round_index=self.epoch)
            return sel.indices.to(dev), sel.weights.to(dev)
        n = len(self.source)
        return torch.arange(n, device=dev), torch.ones(n, device=dev)

    def _allocated(self) -> tuple[Tensor, Tensor, Tensor]:
        """A coreset epoch that trains the rest too (``rest``): all (n,) positions, their weights (1 outside the
        coreset; a member's coreset weight scaled so that each class's members average 1) and the (n,) member
        mask."""
        assert self.selection is not None
        labels, dev = self.source.labels, self.source.labels.device
        n, k = labels.numel(), int(labels.max()) + 1
        idx, w = self.selection.indices.to(dev), self.selection.weights.to(dev).double()
        count = torch.bincount(labels[idx], minlength=k).double()
        total = torch.zeros(k, dtype=torch.float64, device=dev).index_add_(0, labels[idx], w)
        weights = torch.ones(n, device=dev)
        weights[idx] = (w * (count / total.clamp_min(1e-300))[labels[idx]]).float()
        member = torch.zeros(n, dtype=torch.bool, device=dev)
        member[idx] = True
        return torch.arange(n, device=dev), weights, member

    # --------------------------------------------------------------------- epoch
    def start_epoch(self) -> dict[str, Any] | None:
        """Select a new coreset if the schedule says so; returns that selection's stats, else None (also when
        this epoch has been started already, e.g. by ``len()``)."""
        if self._started == self.epoch:
            return None
        self._started = self.epoch
        self.sampler.set_epoch(self.epoch)
        if not self.selects_at():
            return None
        sel, stats = self.choose()
        self.selection, self.stats = sel, {"epoch": self.epoch + 1, **stats}
        return self.stats

    def choose(self) -> tuple[Selection, dict[str, Any]]:
        """The selection round due at the start of the next epoch (attack pass, then the selector), with its
        statistics (``run_selection``), without making it the coreset."""
        return run_selection(self.selector, self.model, self.objective, self.source, self.generator,
                             batch_size=self.batch_size, features=self.grad_features, layer=self.layer,
                             autocast=self.autocast, progress=self.progress, num_classes=self.num_classes,
                             round_index=self.round_index(), pool=self.pool, measure_error=self.measure_error,
                             cache=self.cache)

    def remember(self, batch: Batch, x_adv: Tensor) -> None:
        """Hand over the training attack's points ``x_adv`` (B, C, H, W) of ``batch`` (one this loader
        yielded): with ``points='cached'`` the next rounds take their gradients there (``coreset.cache``); with
        ``points='attack'`` this does nothing, so a loop may always call it."""
        if self.cache is not None:
            self.cache.remember(batch, x_adv)

    def gradients(self) -> Tensor:
        """(n, D) last-layer gradients of the selection objective at its adversarial points, for every training
        example in order, as a selection round computes them."""
        return selection_gradients(self.model, self.objective, self.source, self.batch_size,
                                   features=self.grad_features, layer=self.layer, autocast=self.autocast,
                                   cache=self.cache)

    def epoch_batches(self) -> Iterator[Batch]:
        """The current epoch's batches under the weight rule (``start_epoch`` first, ``end_epoch`` after); with
        ``rest``, a coreset epoch's batches mark their members (``Batch.strong``)."""
        self._member = None
        if self.rest_objective is not None and self.phase == "coreset":
            idx, w, member = self._allocated()
            self._member = member.cpu()  # once an epoch: each batch's Batch.strong is then a host tensor
            return self.batches_for(idx, w)
        return self.batches_for(*self._plan())

    def batches_for(self, indices: Tensor, weights: Tensor) -> Iterator[Batch]:
        """Batches over ``indices`` (k,) with ``weights`` (k,) under the weight rule, in a seeded order: the
        sampler's epoch (resampled under ``resample``) fetched by the DataLoader."""
        self.sampler.set_coreset(indices, weights)
        self._wbar = weights.float().mean() if self.weight_rule == "epoch" else None
        return self._iterate()

    def _iterate(self) -> Iterator[Batch]:
        """The DataLoader's batches of the sampler's epoch, each made a training batch by the source (device,
        augmentation from the generator, in batch order) and given the weights (and the part of its global batch)
        the batch sampler planned for it."""
        pending, member = self.batch_sampler.pending, self._member
        for out in fetched(self.dataloader, "the training set"):
            idx, w, part = pending.popleft()
            x, y, aug = self.source.finish(*_pair(out), self.generator, part)
            strong = None if member is None else member[idx.cpu()]
            yield Batch(x, y, w.to(y.device), idx, part, aug, strong)

    def end_epoch(self) -> None:
        """Count the current epoch as done (iteration does this itself)."""
        self.epoch += 1
        self._open = False

    def set_epoch(self, epoch: int) -> None:
        """Make ``epoch`` (0-based) the next one, as ``DistributedSampler.set_epoch`` does: a loop that calls it
        every epoch keeps the schedule whatever its iterations did (stopped early, skipped)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch, self._started = epoch, None
        self.sampler.set_epoch(epoch)
        self._open = False

    def loss_norm(self, batch: Batch) -> Tensor | float | None:
        """The loss normaliser of ``batch`` under the weight rule: None (the batch's own weight sum) or, for
        ``epoch``, B * the epoch's mean weight. A rank's part of a global batch (``batch.part``) is normalised by
        the global batch's (its weight sum, or its size * the mean weight) over the world, so that DDP's average
        of the ranks' gradients is the gradient of one process's weighted mean over the whole global batch."""
        p = batch.part
        if self._wbar is None:
            return batch.norm
        return batch.y.numel() * self._wbar if p is None else p.size * self._wbar / p.world

    def count_batches(self, k: int) -> int:
        """Batches this rank gets of an epoch over ``k`` indices (a coreset, a resampled draw, or all)."""
        return self.batch_sampler.count(k)

    def __iter__(self) -> Iterator[Batch]:
        """One epoch. The epoch counts from the moment iteration starts: a loop that stops early (``break``,
        ``islice``, a fixed number of steps) has still done its epoch, and the next iteration is the next
        epoch, re-selecting on schedule."""
        if self._open:
            self.end_epoch()
        self.start_epoch()
        self._open = True
        yield from self.epoch_batches()
        if self._open:
            self.end_epoch()

    def __len__(self) -> int:
        """Batches of the epoch the next iteration yields, right before it starts: a selection due at its
        start is made now (iteration then uses it). During an epoch (an iteration under way): that epoch's."""
        if not self._open:
            self.start_epoch()
        return self.batch_sampler.count(self._plan()[0].numel())

    # --------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (with the model, optimiser and torch's RNG, which the
        attacks draw from): epochs done, the coreset, the generator's state, the last stats and (``points=
        'cached'``) the perturbation cache."""
        sel = self.selection
        state = {"epoch": self.epoch, "generator": self.generator.get_state(), "stats": self.stats,
                 "coreset": None if sel is None else {"indices": sel.indices.cpu(), "weights": sel.weights.cpu()},
                 "started": self._started == self.epoch}
        if self.cache is not None:
            state["cache"] = self.cache.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` (``generator`` may be absent when the caller restores it itself); a state
        of another loader or data set is refused (ValueError) before anything changes."""
        self._check_state(state)
        self.epoch = int(state["epoch"])
        self.sampler.set_epoch(self.epoch)
        self._open = False
        # a selection already made for this epoch (len() before the save) is the coreset saved: keep it
        self._started = self.epoch if state.get("started") else None
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])
        cs, dev = state.get("coreset"), self.source.labels.device
        self.selection = None if cs is None else Selection(cs["indices"].to(dev), cs["weights"].to(dev))
        self.stats = state.get("stats")
        if self.cache is not None:
            self.cache.load_state_dict(state["cache"])
