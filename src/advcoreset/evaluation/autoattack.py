"""AutoAttack (Croce & Hein 2020) with RobustBench's "standard" budgets, built from torchattacks' parts.

The reference package (fra31/auto-attack) is not on PyPI; torchattacks' own ``AutoAttack`` wrapper runs
APGD with 10 iterations (its issue #196), which overstates robustness. Here the four attacks are configured
with the standard budgets and run in sequence, each on the points still robust:

- apgd-ce: APGD, cross-entropy, 100 iterations, 1 restart;
- apgd-t: APGD, targeted DLR loss, 100 iterations, 9 target classes (C - 1 if fewer), 1 restart;
- fab-t: FAB, targeted, 100 iterations, 9 target classes, 1 restart;
- square: Square, margin loss, 5,000 queries, p_init 0.8, 1 restart.

``version="fast"`` runs apgd-ce and apgd-t only (a CPU smoke test, labelled as such in the result).
Budgets can be lowered for tests (``AutoAttackBudgets``); the result then says the budgets are not the
standard ones. Every returned adversarial example is checked to lie in the eps-ball and in [0, 1].

torchattacks side effects handled here: it seeds the global RNG (we fork and restore it), FAB calls
``backward`` (parameters are frozen during the run so no ``.grad`` is touched), and it switches the model
to eval mode (we restore the caller's mode even on error). Our models normalise inside ``forward`` and
torchattacks only normalises for its own ``RobModel`` class, so the model sees pixels in [0, 1].
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advcoreset.evaluation.common import check_perturbation, model_device, to_unit
from advcoreset.objectives.base import eval_mode
from advcoreset.progress import Reporter, Task, reporter_or_silent

VERSIONS = ("standard", "fast")
_INSTALL_HINT = "pip install --no-deps torchattacks==3.5.1"


@dataclass(frozen=True)
class AutoAttackBudgets:
    """Iterations / queries per attack; the defaults are RobustBench's standard AutoAttack."""

    apgd_steps: int = 100
    apgdt_steps: int = 100
    target_classes: int = 9
    fab_steps: int = 100
    square_queries: int = 5000


STANDARD_BUDGETS = AutoAttackBudgets()


def _import_torchattacks() -> Any:
    try:
        import torchattacks
    except ImportError as e:
        raise ImportError(
            f"AutoAttack needs torchattacks, which is not installed: run `{_INSTALL_HINT}` (--no-deps: its "
            "declared torchvision dependency would replace the installed torch)") from e
    return torchattacks


@contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad for the duration (FAB calls ``backward``; inputs still get grads)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def _private_rng() -> Iterator[None]:
    """torchattacks calls ``torch.manual_seed`` itself; keep the caller's RNG streams untouched."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield


def square_l2_fits(h: int, w: int) -> bool:
    """Whether torchattacks' Square l_2 start (a grid of (h // 5)-pixel squares from offset
    (h - 5 (h // 5)) // 2) stays inside an h x w image."""
    s = h // 5
    if s < 1:
        return False
    offset = (h - 5 * s) // 2
    return offset + (h // s) * s <= h and offset + (w // s) * s <= w


@dataclass
class _Spec:
    name: str
    budget: dict[str, Any]
    attack: Callable[[Tensor, Tensor], Tensor]


def _build(ta: Any, model: nn.Module, *, norm: str, eps: float, n_classes: int, version: str,
           budgets: AutoAttackBudgets, seed: int) -> list[_Spec]:
    tnorm = {"linf": "Linf", "l2": "L2"}[norm]
    n_targets = min(budgets.target_classes, n_classes - 1)

    apgd = ta.APGD(model, norm=tnorm, eps=eps, steps=budgets.apgd_steps, n_restarts=1, seed=seed, loss="ce",
                   eot_iter=1, rho=0.75, verbose=False)
    apgdt = ta.APGDT(model, norm=tnorm, eps=eps, steps=budgets.apgdt_steps, n_restarts=1, seed=seed,
                     eot_iter=1, rho=0.75, verbose=False, n_classes=n_classes)
    apgdt.n_target_classes = n_targets  # reference AutoAttack: 9 targets even for 100 classes
    specs = [
        _Spec("apgd-ce", {"loss": "ce", "iterations": budgets.apgd_steps, "restarts": 1}, apgd),
        _Spec("apgd-t", {"loss": "dlr-targeted", "iterations": budgets.apgdt_steps, "restarts": 1,
                         "target_classes": n_targets}, apgdt),
    ]
    if version == "standard":
        fab = ta.FAB(model, norm=tnorm, eps=eps, steps=budgets.fab_steps, n_restarts=1, alpha_max=0.1,
                     eta=1.05, beta=0.9, verbose=False, seed=seed, multi_targeted=True, n_classes=n_classes)
        fab.n_target_classes = n_targets
        # The reference runs 5,000 queries on the unrescaled p schedule; a reduced budget rescales it so a
        # short attack still goes through the whole schedule.
        square = ta.Square(model, norm=tnorm, eps=eps, n_queries=budgets.square_queries, n_restarts=1,
                           p_init=0.8, loss="margin", resc_schedule=budgets.square_queries != 5000, seed=seed,
                           verbose=False)
        specs += [
            _Spec("fab-t", {"iterations": budgets.fab_steps, "restarts": 1, "target_classes": n_targets},
                  fab),
            _Spec("square", {"queries": budgets.square_queries, "restarts": 1, "p_init": 0.8,
                             "loss": "margin"}, square),
        ]
    return specs


def autoattack_robust_mask(model: nn.Module, images: Tensor, labels: Tensor, *, norm: str, eps: float,
                        version: str = "standard", budgets: AutoAttackBudgets | None = None, seed: int = 0,
                        n_classes: int | None = None, batch_size: int = 500,
                        device: torch.device | str | None = None,
                        progress: Reporter | None = None) -> tuple[Tensor, dict[str, Any]]:
    """Per-example robustness under AutoAttack: ((N,) bool on the CPU, the result dict below).

    Args:
        model: maps (B, C, H, W) pixels in [0, 1] to logits (B, n_classes); normalises inside ``forward``.
        images: (N, C, H, W) uint8 or float in [0, 1]; labels: (N,) int64.
        norm: "linf" or "l2"; eps: radius in [0, 1] pixel units.
        version: "standard" (APGD-CE, APGD-T, FAB-T, Square) or "fast" (APGD-CE, APGD-T only).
        budgets: override the standard budgets (tests); recorded in the result.
        seed: torchattacks' seed for every attack (the caller's RNG state is left untouched).
        n_classes: C; default ``model.num_classes`` or the width of the logits.
        progress: a reporter (``advcoreset.progress``): one task per sub-attack over the points still
            robust, noting the remaining robust count; None: silent.

    Returns:
        {"autoattack_acc": float, "autoattack": {"version", "standard_budgets", "comparable_to_robustbench",
        "norm", "eps", "n", "seed", "clean_acc", "attacks": [{"name", budget..., "robust_after",
        "seconds"}, ...], "implementation"}}; robust_after is the accuracy after that attack, in [0, 1].

    Raises:
        ImportError: torchattacks is missing. RuntimeError: an attack returned a point outside the
        eps-ball or [0, 1].
    """
    budgets = budgets or STANDARD_BUDGETS
    ta = _import_torchattacks()
    dev = model_device(model, device)
    n = images.shape[0]
    n_classes = _check_aa_inputs(model, images, labels, norm=norm, eps=eps, version=version, n_classes=n_classes,
                                 device=dev)
    records: list[dict[str, Any]] = []
    with eval_mode(model), _frozen_parameters(model), _private_rng():
        robust = _clean_mask(model, images, labels, batch_size, dev)
        clean_acc = float(robust.float().mean())
        for spec in _build(ta, model, norm=norm, eps=eps, n_classes=n_classes, version=version,
                           budgets=budgets, seed=seed):
            t0 = time.perf_counter()
            todo = robust.nonzero().flatten()
            chunks = [c for c in todo.split(batch_size) if c.numel() > 0]  # split() of nothing: one empty chunk
            with reporter_or_silent(progress)(f"AutoAttack {spec.name} ({norm}, eps {eps:g})", todo.numel()) as task:
                for i, idx in enumerate(chunks, 1):
                    with _heartbeat(model, task, f"chunk {i}/{len(chunks)}", f"robust {int(robust.sum())}/{n}"):
                        fooled = _fooled(spec, model, images[idx], labels[idx], eps, norm, dev)
                    robust[idx[fooled]] = False
                    task.update(idx.numel(), note=f"robust {int(robust.sum())}/{n}")
            records.append({"name": spec.name, **spec.budget, "robust_after": float(robust.float().mean()),
                            "seconds": round(time.perf_counter() - t0, 3)})
    info = {"version": version, "norm": norm, "eps": float(eps), "n": int(n), "seed": int(seed),
            "clean_acc": clean_acc, "attacks": records}
    return robust, {"autoattack_acc": float(robust.float().mean()), "autoattack": _describe(info, budgets, ta)}


@contextmanager
def _heartbeat(model: nn.Module, task: Task, where: str, robust: str) -> Iterator[None]:
    """While a sub-attack runs on one chunk (minutes for standard AutoAttack on a CPU), count the model's
    forward passes and report them through ``task`` (which prints at most once per its interval), so a
    long chunk is not silent. Only observes: the attack and its random draws are unchanged."""
    passes = 0

    def seen(*_: Any) -> None:
        nonlocal passes
        passes += 1
        task.update(0, note=f"{where}, {passes} model passes | {robust}")

    handle = model.register_forward_hook(seen)
    try:
        yield
    finally:
        handle.remove()


def _describe(info: dict[str, Any], budgets: AutoAttackBudgets, ta: Any) -> dict[str, Any]:
    """The ``autoattack`` record: ``info`` plus whether the budgets are the standard ones (and so the number
    comparable to RobustBench), a note for the reduced version, the budgets and the implementation."""
    standard_budgets = budgets == STANDARD_BUDGETS
    version = info["version"]
    return {
        "version": version,
        "standard_budgets": standard_budgets,
        "comparable_to_robustbench": version == "standard" and standard_budgets,
        "note": ("" if version == "standard" else
                 "fast: APGD-CE + APGD-T only (no FAB-T, no Square); a smoke test, not full AutoAttack"),
        **{k: info[k] for k in ("norm", "eps", "n", "seed", "clean_acc", "attacks")},
        "budgets": asdict(budgets),
        "implementation": f"torchattacks {getattr(ta, '__version__', '?')} APGD/APGDT/FAB/Square",
    }


def _check_aa_inputs(model: nn.Module, images: Tensor, labels: Tensor, *, norm: str, eps: float, version: str,
                     n_classes: int | None, device: torch.device) -> int:
    """Refuse what AutoAttack cannot run, before any attack; returns the class count C."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    if norm not in ("linf", "l2"):
        raise ValueError(f"AutoAttack supports norm 'linf' or 'l2', got {norm!r}")
    if eps <= 0:
        raise ValueError(f"AutoAttack needs eps > 0, got {eps}")
    if images.dim() != 4 or labels.shape != (images.shape[0],) or images.shape[0] == 0:
        raise ValueError(f"need images (N, C, H, W) and labels (N,) with N > 0, got {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    if n_classes is None:
        n_classes = getattr(model, "num_classes", None)
        if n_classes is None:
            with eval_mode(model), torch.no_grad():
                n_classes = int(model(to_unit(images[:1], device)).shape[1])
    if n_classes < 4:
        raise ValueError(f"AutoAttack's APGD-T uses the targeted DLR loss, which needs at least 4 classes; "
                         f"got {n_classes}")
    if version == "standard" and norm == "l2" and not square_l2_fits(*images.shape[2:]):
        raise ValueError(f"torchattacks' Square (l_2) initialisation tiles the image with h // 5 squares and "
                         f"fails on {tuple(images.shape[2:])} images (fine for 28x28, 32x32, 10x10)")
    return n_classes


@torch.no_grad()
def _clean_mask(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """(N,) bool on the CPU: correctly classified clean images."""
    out = torch.zeros(images.shape[0], dtype=torch.bool)
    for start in range(0, images.shape[0], batch_size):
        xb = to_unit(images[start:start + batch_size], device)
        out[start:start + batch_size] = (model(xb).argmax(1) == labels[start:start + batch_size].to(device)).cpu()
    return out


def _fooled(spec: Any, model: nn.Module, images: Tensor, labels: Tensor, eps: float, norm: str,
            device: torch.device) -> Tensor:
    """(B,) bool on the CPU: which of these (B, C, H, W) images the sub-attack ``spec`` fools, after checking
    that its points stay in the eps-ball and [0, 1]."""
    x, y = to_unit(images, device), labels.to(device)
    x_adv = spec.attack(x, y).detach()
    check_perturbation(x_adv, x, eps=eps, norm=norm, attack=f"AutoAttack {spec.name}")
    with torch.no_grad():
        return (model(x_adv).argmax(1) != y).cpu()


def autoattack_accuracy(model: nn.Module, images: Tensor, labels: Tensor, *, norm: str, eps: float,
                        version: str = "standard", budgets: AutoAttackBudgets | None = None, seed: int = 0,
                        n_classes: int | None = None, batch_size: int = 500,
                        device: torch.device | str | None = None,
                        progress: Reporter | None = None) -> dict[str, Any]:
    """Robust accuracy under AutoAttack, with the budgets that ran (see ``autoattack_robust_mask``)."""
    return autoattack_robust_mask(model, images, labels, norm=norm, eps=eps, version=version, budgets=budgets,
                                  seed=seed, n_classes=n_classes, batch_size=batch_size, device=device,
                                  progress=progress)[1]
