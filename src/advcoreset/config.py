"""One typed configuration for a run: loadable from YAML, overridable with ``key=value``.

Every knob of a run lives here, grouped by the part of the method it drives. This module is the ground
floor: it imports nothing of the package, so every part may import it. The checks that need the registries
(``advcoreset.config_checks.validate``, run by ``load_config`` before any training) live above it and name
the offending field (``attack.eps must be >= 0, got -1``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, cast, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range. The message names the field."""


class ConfigTypeError(ConfigError, TypeError):
    """An argument of the Python API is of the wrong kind (``train(config=123)``, ``model=None``): a
    ``TypeError`` for Python callers, a ``ConfigError`` (bad input, exit 2) for the command line."""


USER = "user"
"""``data.name`` / ``model.name`` of a run whose Dataset / model the caller passed to ``train()``; the section's
``user`` field then records what it was."""


@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    """Dataset: fashion-mnist, mnist, cifar10, cifar100, svhn, imagefolder, digits."""
    root: str | None = None
    """Folder with the dataset's standard files; None = the dataset's default location."""
    train_subset: int | None = None
    """Use only the first N training images (after a seeded, class-stratified shuffle); None = all."""
    val_size: int = 0
    """Images held out of training for per-epoch robust validation (best checkpoint). 0 = none."""
    test_subset: int | None = 2000
    """Evaluate on N test images, the same for every run: the first N of a class-stratified order drawn with
    a fixed seed (every class in proportion); None = all."""
    augment: str = "none"
    """none, crop, crop_flip or auto (crop_flip for natural images, crop for digits/clothes/SVHN). The
    default is none: on 3-epoch Fashion-MNIST runs, random crops cost 5 points of clean accuracy (measured:
    77.6% vs 82.9% on 20k images)."""
    crop_padding: int = 2
    image_size: int | None = None
    """imagefolder only: resize every image to this square size (None: all images must share a size)."""
    user: dict[str, Any] | None = None
    """Written by ``train(train_set=...)``, never by hand: with ``name: user``, the caller's Dataset as it ran
    (class, size, test_class, test_size, shape, num_classes, class_names, keys)."""


@dataclass
class ModelConfig:
    name: str = "small_cnn"
    """Registered model name (see ``advcoreset.models.available_models()``)."""
    width: int | None = None
    """Width knob: small CNNs' base channels (default 32 -> 32-64), ResNets' base width (64),
    WideResNets' widen factor (10). None = the architecture's default."""
    user: dict[str, Any] | None = None
    """Written by ``train(model=...)``, never by hand: with ``name: user``, the caller's module as it ran
    (class, module, factory "package.module:function" or None, parameters)."""


@dataclass
class AttackConfig:
    norm: str = "linf"
    """linf or l2. Distances are in [0, 1] pixel units."""
    eps: float = 0.1
    alpha: float = 0.025
    """Step size (per step, same units as eps)."""
    steps: int = 7
    random_start: bool = True
    restarts: int = 1


@dataclass
class PATConfig:
    bound: float = 0.5
    """LPIPS bound of the perceptual threat model."""
    steps: int = 10
    """Fast-LPA steps during training."""
    lpips: str = "self"
    """self (the model's own normalised activations) or a path to local AlexNet weights."""
    lambda_init: float = 1.0
    lambda_growth: float = 10.0
    """Fast-LPA: the Lagrange multiplier grows geometrically from lambda_init to lambda_growth*init."""


@dataclass
class ObjectiveConfig:
    name: str = "pgd"
    """standard, pgd, trades, fast (FGSM-RS), nfgsm (N-FGSM, l_inf only), pat."""
    beta: float = 6.0
    """TRADES trade-off (applied once)."""
    attack: AttackConfig = field(default_factory=AttackConfig)
    pat: PATConfig = field(default_factory=PATConfig)


POINTS = ("attack", "cached")
"""Where a selection round takes its gradients (``selection.points``): at the selection attack's points, or at
each example's cached perturbation (``advcoreset.coreset.cache.PerturbationCache``)."""
WARM_STARTS = ("full", "rs2")
"""What the warm epochs train on (``selection.warm_start``): all data, or RS2's fresh uniform subsets."""
RESTS = ("drop", "clean", "selection_attack")
"""What the examples outside the coreset do in a coreset epoch (``selection.rest``)."""


@dataclass
class SelectionConfig:
    method: str = "full"
    """full, random, random_fixed, rs2 (needs interval 1), craig, gradmatch. The default, full (every epoch on
    all the data), is what the equal-cost study measured best at the default's cost of 7 full-data PGD-7
    epochs, a third of a 20-epoch schedule (``configs/bench/budget.yaml``, benchmarks/README.md "Equal-cost
    study"); a coreset is one setting away (``selection.method: gradmatch`` or craig, with ``fraction``,
    ``warm_epochs`` and ``interval`` below)."""
    fraction: float = 0.3
    """Coreset size as a fraction of each class, in (0, 1]."""
    batchwise: bool = False
    """Select whole fixed mini-batches (gradients averaged per batch) instead of single examples."""
    selection_batch_size: int = 32
    """Mini-batch size for batch-wise selection."""
    warm_epochs: int = 1
    """Epochs of full-data training (with the training objective) before the first selection."""
    warm_start: str = "full"
    """What the warm epochs train on: full (all data) or rs2: a fresh uniform ``fraction`` of every class each
    warm epoch, without replacement across them (Okanovic et al., ICLR 2024), so a warm epoch costs what a
    coreset epoch does and a budget buys more of them."""
    interval: int = 4
    """Re-select every R training epochs after the warm start."""
    grad_features: str = "last_layer"
    """logits (dL/dz only) or last_layer ([dL/dz, dL/dW] of the final linear layer)."""
    points: str = "attack"
    """Where a round takes the gradients: attack (the selection attack's points over the whole set) or cached:
    each example's perturbation from the last time it was trained (ATTA, Zheng et al., CVPR 2020), so a round
    costs a forward pass instead of an attack pass; examples never trained yet are attacked. One process only
    for now (``coreset/cache.py``; ``benchmarks/selection_features.py`` measured the chosen sets' error)."""
    attack_steps: int | None = 1
    """Steps of the selection attack; None = the training attack's. Fewer steps make selection cheaper; 1
    (default) chose coresets as good as the training attack's 7 at a fraction of the cost
    (``configs/bench/targets_120*.yaml``, benchmarks/README.md)."""
    attack_alpha: float | None = None
    """Step of the selection attack; None = the training step, or 2.5 eps / attack_steps when attack_steps
    is set (Madry et al.'s rule, so a short attack still reaches the boundary of the ball)."""
    lam: float = 0.5
    """GradMatch ridge regulariser of the NNLS weights."""
    lam_relative: bool = False
    """GradMatch: scale ``lam`` by each class's mean squared gradient norm, so the ridge weighs the same
    whatever the gradients' scale (false: ``lam`` is absolute, the paper's rule)."""
    solver_threads: int | None = None
    """CPU threads of the CRAIG / GradMatch solver (None: the run's own count). Its many small float64
    operations can run slower on more threads (``benchmarks/selection_solver.py --threads``)."""
    tol: float = 0.0
    """GradMatch stops when the relative residual falls below tol and fills the rest of the budget at random,
    with a fitted (small) shared weight. 0 (default) spends the whole budget on matching: with tol > 0 much
    of the budget can become such a near-weightless fill, which trained less robust than a random subset
    (benchmarks/README.md, "Selection: gradient error and overhead")."""
    max_class_size: int = 20000
    """CRAIG: classes larger than this use partitioned greedy instead of the exact O(n^2) one."""
    rest: str = "drop"
    """What the examples outside the coreset do in a coreset epoch: drop (left out; the coreset's weights
    stand for them), or they train too at a cheaper point, as BulletTrain allocates the attack (Hua et al.,
    NeurIPS 2021): clean, or selection_attack (the selection attack's, 1-step by default). Then every example
    trains once an epoch with weight 1 and the coreset members, at the training attack, with their weights
    scaled to a mean of 1 per class; ``optim.weight_norm`` resample is refused."""
    pool: float | None = None
    """Pool-then-match (craig, gradmatch): each round attacks and matches only inside a fresh random pool of
    ``pool`` x the budget per class, drawn without replacement across rounds (the CREST idea, Yang et al.,
    ICML 2023), so a round costs in proportion to the pool; meant with ``interval: 1``. None: the whole set."""
    distributed: str = "gather"
    """Selection under torchrun (world > 1): gather (exact: gradients go to the rank owning their class) or
    partition (GreeDi-style: each rank solves its own slice, only indices and weights travel)."""
    partition_rounds: int = 1
    """partition: 2 adds a second solve on the union of the ranks' candidates (exact budget)."""
    measure_error: bool | str = "auto"
    """Also take the gradient pass at the rounds of a selector that reads no gradients (random, rs2), so that
    every method records its ``grad_error``. The pass is timed as ``time_error_pass``, outside the training
    and selection time (and the cost), and draws nothing from the run's random streams. auto: on for
    random and random_fixed (a round every ``interval`` epochs), off for rs2, which re-selects every epoch by
    design: a whole selection attack pass per epoch would lengthen its run more than its training does and
    would tell what random's rounds tell (both are uniform subsets). Not under torchrun (auto: off there)."""


@dataclass
class OptimConfig:
    name: str = "sgd"
    """Optimiser: sgd (momentum, nesterov, weight_decay) or adamw (betas, weight_decay)."""
    epochs: int = 7
    """Epochs that train (warm and coreset ones together); 7 is the equal-cost study's budget of a third of
    the full-scale study's 20 (``selection.method``)."""
    batch_size: int = 128
    lr: float = 0.1
    """Peak learning rate (one-cycle) or initial one (step, cosine)."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's moment decay rates."""
    schedule: str = "onecycle"
    """onecycle, step, cosine, constant or none. Counts only the epochs (and steps) that train. With an
    optimiser of one's own (``train(optimizer=...)``) the schedule scales each parameter group's own rate by
    its shape (``lr_at / lr``); ``none`` leaves the rates alone (the optimiser's, or a ``scheduler=``'s)."""
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    """Step schedule: fractions of the run at which the LR drops by ``gamma``."""
    gamma: float = 0.1
    pct_start: float = 0.3
    """One-cycle: fraction of steps spent warming up."""
    grad_clip: float | None = None
    sync_bn: bool | None = None
    """Under torchrun: BatchNorm as SyncBatchNorm. None (auto): on for CUDA ranks when world > 1; PyTorch has
    no CPU kernel, so true on CPU ranks is an error."""
    weight_norm: str = "auto"
    """How coreset weights enter the loss. auto (default): the selector's own rule, resample for CRAIG, batch
    for every other method (the choice measured by ``configs/bench/targets_120_i10*.yaml``).
    batch: sum_j w_j l_j / sum_j w_j over each mini-batch (the
    paper's rule): every step is a convex combination of per-example losses, so a few heavy CRAIG weights
    cannot blow up a step. epoch: sum_j w_j l_j / (B * mean weight of the epoch), unbiased for the epoch's
    weighted sum but a batch that holds heavy points takes a larger step. Training batches are drawn at
    random from the whole coreset, so batch-wise weights matter under either rule. Uniform weights give the
    plain mean under both. resample: every epoch draws as many points as the coreset holds, with replacement
    and in proportion to the weights, and trains them with unit weights (same expected loss as epoch, no
    heavy points; uniform weights train the coreset as it is)."""
    accumulate: int = 1
    """Gradient accumulation: mini-batches (of ``batch_size``) per optimiser step. The step's loss is
    normalised by the weight of all of them together, so it equals one batch of accumulate x batch_size with
    the same weights, at the memory of one mini-batch; the LR schedule and a ``scheduler=`` advance per step."""


@dataclass
class EvalConfig:
    pgd_steps: int = 20
    pgd_alpha: float | None = None
    """PGD step for evaluation; None = 2.5 eps / steps (every budget can cross the ball; recorded as the
    ``alpha_rule`` of the results)."""
    pgd_restarts: int = 1
    every: int = 1
    """Evaluate on the test subset every N epochs (0 = only at the end)."""
    val_pgd_steps: int = 10
    autoattack: bool = False
    """Run standard AutoAttack at the end of training (slow on CPU)."""
    autoattack_n: int = 500
    autoattack_targets: int = 9
    """Target classes of APGD-T / FAB-T (9 = standard; fewer is cheaper and is reported as non-standard)."""
    autoattack_version: str = "standard"
    """standard (APGD-CE, APGD-T, FAB-T, Square at RobustBench budgets) or fast (APGD-CE + APGD-T only,
    labelled as such in every result)."""
    batch_size: int = 500
    union_linf_eps: float | None = None
    """PAT evaluation: l_inf AutoAttack radius of the union of threat models (None: the training attack's
    eps when it is l_inf, otherwise skipped)."""
    union_l2_eps: float | None = None
    """PAT evaluation: l_2 AutoAttack radius of the union of threat models (None: skipped)."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:N."""
    amp: bool | str = "auto"
    """bf16 autocast of the training step and the selection pass: auto (CUDA; a CPU with native bf16 once
    its accuracy check passes), true (CUDA or a CPU with native bf16; refused on other CPUs), false (fp32).
    Evaluation attacks always run in fp32 (``advcoreset.precision``)."""
    channels_last: bool = True
    """channels_last memory format on CUDA, and on the CPU when the run computes in bf16 (``amp``)."""
    threads: int | None = None
    """torch CPU threads; None = torch's default."""
    out_dir: str = "runs/default"
    progress: str = "auto"
    """auto (bars on a terminal, a line per epoch otherwise), bar, line, none."""
    tensorboard: bool = False

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return _build(cls, d, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} " + ("is a folder" if path.is_dir() else "does not exist"))
        raw = read_yaml(path, "config file") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        try:
            return cls.from_dict(raw)
        except ConfigError as e:  # an unknown key or a value of the wrong type: name the file as well
            raise type(e)(f"config file {path}: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def with_overrides(self, overrides: list[str]) -> Config:
        """Apply ``section.key=value`` strings (value parsed as YAML) and return a new config."""
        d = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value (e.g. objective.attack.eps=0.1)")
            key, value = item.split("=", 1)
            node = d
            parts = key.strip().split(".")
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"unknown config field {key!r}")
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"unknown config field {key!r}")
            try:
                node[parts[-1]] = yaml.safe_load(value)
            except (yaml.YAMLError, ValueError) as e:  # ValueError: an integer of more than 4300 digits
                raise ConfigError(f"override {key}={value!r}: the value is not valid YAML ({_one_line(e)}); "
                                  "quote strings, e.g. --set data.root='my dir'") from None
        return Config.from_dict(d)


def _build(cls: type, d: dict[str, Any], prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {d!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown config field(s) {sorted(prefix + u for u in unknown)}; "
                          f"known in this section: {sorted(known)}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        kwargs[f.name] = _coerce(hints[f.name], d[f.name], prefix + f.name)
    return cls(**kwargs)


def _coerce(tp: Any, v: Any, name: str) -> Any:
    if is_dataclass(tp):
        return _build(cast(type, tp), v, name + ".")  # a type hint: the dataclass itself, not an instance
    origin, args = get_origin(tp), get_args(tp)
    if args and type(None) in args:  # Optional[X]
        if v is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], v, name)
    if origin is list:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {v!r}")
        return [_coerce(args[0], x, name) for x in v]
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{name} must be true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{name} must be an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, str):  # YAML 1.1 reads 2e-4 (no dot) as a string
            try:
                return float(v)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{name} must be a number, got {v!r}")
        try:
            return float(v)
        except OverflowError:  # an integer beyond any float (10**400)
            raise ConfigError(f"{name} must be a finite number, got an integer of {len(str(abs(v)))} digits") \
                from None
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{name} must be a string, got {v!r}")
        return v
    return v


MAX_YAML_BYTES = 1_000_000
"""The largest config or bench spec read: the biggest in configs/ is a few kB."""
MAX_YAML_DEPTH = 20
"""The deepest nesting of a value (a bench spec's objectives.NAME.coreset.selection.KEY is 5)."""


class YamlShapeError(ValueError):
    """A YAML document parses but has a shape no config has (a duplicate or non-string key, absurd nesting)."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (safe tags only, never Python objects) that refuses, naming the key by its dotted
    path and line: a key given twice in one mapping (plain YAML keeps the last in silence), a key that is not
    a string (``1:``, ``~:``, ``yes:``), values nested deeper than ``MAX_YAML_DEPTH`` and an alias inside its
    own anchor (a recursive value)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._path: list[str] = []
        self._depth = 0
        self._open_anchors: set[str] = set()

    def _where(self, key: str | None = None) -> str:
        parts = [*self._path, key] if key is not None else self._path
        return ".".join(parts).replace(".[", "[") or "the top level"

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        step = None
        if isinstance(parent, yaml.MappingNode) and isinstance(index, yaml.ScalarNode):
            step = str(index.value)  # the value of key ``index``
        elif isinstance(parent, yaml.SequenceNode):
            step = f"[{index}]"
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) and event.anchor in self._open_anchors:
            line = event.start_mark.line + 1  # type: ignore[union-attr]  # the parser always sets the marks
            raise YamlShapeError(f"{self._where(step)} (line {line}) refers to *{event.anchor} "
                                 "inside its own anchor, a value without end; write the value out")
        if step is not None:
            self._path.append(step)
        self._depth += 1  # keys too: a key can be a nested collection (``? [[...]]``)
        if self._depth > MAX_YAML_DEPTH + 1:
            where = self._where()
            where = where if len(where) <= 60 else where[:60] + "..."
            raise YamlShapeError(f"the value at {where} (line {event.start_mark.line + 1}) is nested more than "
                                 f"{MAX_YAML_DEPTH} levels deep; no config field is nested that deep")
        anchor = None if isinstance(event, yaml.AliasEvent) else getattr(event, "anchor", None)
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            # PyYAML's compose_node always returns a node; the stubs say Node | None
            return cast(yaml.Node, super().compose_node(parent, index))
        finally:
            self._depth -= 1
            self._open_anchors.discard(anchor or "")
            if step is not None:
                self._path.pop()

    # types-PyYAML annotates ``anchor`` as a dict; PyYAML passes the event's anchor, a str or None
    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:  # type: ignore[override]
        node: yaml.MappingNode = super().compose_mapping_node(anchor)  # type: ignore[arg-type]
        seen: dict[str, int] = {}
        for key, _ in node.value:
            line = key.start_mark.line + 1
            if key.tag == "tag:yaml.org,2002:merge":  # ``<<: *base``: its keys may be overridden, by design
                continue
            if not isinstance(key, yaml.ScalarNode) or key.tag != "tag:yaml.org,2002:str":
                place = f"in {self._where()}" if self._path else "at the top level"
                what = (f"key {key.value!r} {place} (line {line}) is read as {str(key.tag).rsplit(':', 1)[-1]}"
                        if isinstance(key, yaml.ScalarNode) else f"a {key.id} used as a key {place} (line {line})")
                raise YamlShapeError(f"{what}, not a name: every key must be a field name (a string); quote it "
                                     "if it is one")
            if key.value in seen:
                raise YamlShapeError(f"key {self._where(key.value)!r} is given twice (lines {seen[key.value]} and "
                                     f"{line}); YAML would silently keep the last: remove one")
            seen[key.value] = line
        return node


def read_yaml(path: Path, what: str, error: type[ConfigError] = ConfigError) -> Any:
    """The YAML document in ``path`` read with ``StrictLoader``; ``error`` names ``what`` and ``path`` when the
    file is too large (over ``MAX_YAML_BYTES``), unreadable, not YAML or of a shape no config has."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
        if len(data) > MAX_YAML_BYTES:
            raise error(f"{what} {path} is larger than {MAX_YAML_BYTES // 1_000_000} MB; a config is a few kB: "
                        "give the right file")
        return yaml.load(data.decode("utf-8"), Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except YamlShapeError as e:  # one line even when a key holds a line break
        raise error(f"{what} {path}: {_one_line(e)}") from None
    except yaml.YAMLError as e:
        raise error(f"{what} {path} is not valid YAML: {_one_line(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} {path} cannot be read ({type(e).__name__}); give a readable UTF-8 YAML file") from None
    except ValueError as e:  # PyYAML's int(): an integer of more than 4300 digits
        raise error(f"{what} {path} is not valid YAML: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
