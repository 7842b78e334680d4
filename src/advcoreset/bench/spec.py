"""A benchmark spec (``advcoreset bench SPEC``): read and checked before any run starts (issue 11).

Every key must be known (a ``fraction:`` meant as ``fractions:`` is an error, not an ignored key), every
list non-empty and typed, and names used as folder names plain (``name: ../../x`` cannot write outside the
results folder).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from advcoreset.bench.evals import check_extra_evals
from advcoreset.config import ConfigError, read_yaml

METHODS: dict[str, dict[str, Any]] = {
    "full": {"method": "full"},
    "random": {"method": "random"},
    "random_fixed": {"method": "random_fixed"},
    "rs2": {"method": "rs2", "warm_epochs": 0, "interval": 1},  # a fresh subset every epoch from the first
    "craig": {"method": "craig", "batchwise": False},
    "gradmatch": {"method": "gradmatch", "batchwise": False},
    "craig_pb": {"method": "craig", "batchwise": True},
    "gradmatch_pb": {"method": "gradmatch", "batchwise": True},
}


class SpecError(ConfigError):
    """A benchmark spec (or a bench flag) is malformed; the message names the spec and the key."""


SPEC_KEYS = ("name", "description", "base", "objectives", "methods", "fractions", "seeds", "jobs", "threads",
             "reference", "targets", "extra_evals", "world_size", "probe",
             "speedup_basis", "budget_targets")
ENTRY_KEYS = ("methods", "fractions", "seeds", "coreset", "budget", "label")
"""Keys of an ``objectives`` entry that are not config fields: its methods, fractions and seeds, a ``coreset``
mapping for every method but full, the ``budget`` its rows are compared at (full-data PGD-7 epochs) and the
``label`` its rows show as their objective (default: the entry's name)."""
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read and check a benchmark spec: every key known, every list non-empty and typed, names safe to
    use as folder names. Raises ``SpecError`` naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"benchmark spec {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    spec = read_yaml(path, "benchmark spec", SpecError)  # duplicate or non-string keys, absurd nesting: refused
    if not isinstance(spec, dict):
        raise SpecError(f"benchmark spec {path} must hold a mapping (name, base, objectives, methods, seeds)")
    _check_spec(spec, f"benchmark spec {path}")
    check_extra_evals(spec, path)
    return spec


def _check_probe(spec: dict[str, Any], where: str) -> None:
    if "probe" in spec and not isinstance(spec["probe"], bool):
        raise SpecError(f"{where}: probe must be true or false (time a machine-speed probe around each run), "
                        f"got {spec['probe']!r}")
    if spec.get("speedup_basis", "probe") not in ("time", "probe", "epoch"):
        raise SpecError(f"{where}: speedup_basis must be time, probe or epoch (what a speed-up divides the "
                        f"training times by), got {spec['speedup_basis']!r}")
    if spec.get("probe") and int(spec.get("jobs", 1)) > 1:
        raise SpecError(f"{where}: probe: true needs jobs: 1 (concurrent runs would disturb each other's probe)")


def _check_budget_entry(entry: dict[str, Any], where: str) -> None:
    b = entry.get("budget")
    if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < 1e6):
        raise SpecError(f"{where}.budget must be a positive number (full-data PGD-7 epochs), got {b!r}")
    lab = entry.get("label")
    if lab is not None and (not isinstance(lab, str) or not _SAFE_NAME.fullmatch(lab)):
        raise SpecError(f"{where}.label must be a plain name (letters, digits, . _ -), got {lab!r}")


def _check_budget_targets(spec: dict[str, Any], where: str) -> None:
    t = spec.get("budget_targets")
    if t is None:
        return
    if not isinstance(t, dict):
        raise SpecError(f"{where}: budget_targets must be a mapping (coresets, within, metric)")
    _unknown(t, ("coresets", "within", "metric"), f"{where}: budget_targets")
    _check_list(t.get("coresets"), f"{where}: budget_targets.coresets", lambda m: m in METHODS,
                f"methods from {sorted(METHODS)}")
    within = t.get("within", 0.1)
    if isinstance(within, bool) or not isinstance(within, (int, float)) or not 0 <= within < 1:
        raise SpecError(f"{where}: budget_targets.within must be a fraction in [0, 1), got {within!r}")
    if t.get("metric", "autoattack") not in ("autoattack", "pgd"):
        raise SpecError(f"{where}: budget_targets.metric must be autoattack or pgd, got {t.get('metric')!r}")
    if not any("budget" in e for e in spec["objectives"].values() if isinstance(e, dict)):
        raise SpecError(f"{where}: budget_targets needs objectives entries with a budget")


def _unknown(keys: Any, known: tuple[str, ...], where: str) -> None:
    bad = [k for k in keys if k not in known]
    if bad:
        hints = {k: difflib.get_close_matches(str(k), known, n=1) for k in bad}
        hint = "; ".join(f"{k!r}: did you mean {h[0]!r}?" for k, h in hints.items() if h)
        raise SpecError(f"{where}: unknown key(s) {bad} ({hint or f'known: {list(known)}'})")


def _check_list(value: Any, where: str, ok: Any, what: str) -> None:
    if not isinstance(value, list) or not value or not all(ok(v) for v in value):
        raise SpecError(f"{where} must be a non-empty list of {what}, got {value!r:.80}")


def entry_seeds(spec: dict[str, Any], entry: dict[str, Any], method: str) -> list[int]:
    """The seeds of ``method``'s runs in an objectives ``entry``: its ``seeds`` list, or its ``seeds`` mapping's
    list for that method, else the spec's ``seeds``."""
    own = entry.get("seeds", spec["seeds"])
    return list(own.get(method, spec["seeds"]) if isinstance(own, dict) else own)


def _check_seeds(seeds: Any, where: str) -> None:
    _check_list(seeds, where, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"{where} {seeds} repeat a seed (two runs would share a folder)")


def _check_distinct(fractions: list[float], where: str) -> None:
    """Fractions that agree to 6 decimals (or to the 6 digits of a run folder's name, ``-f{fraction:g}``) would
    share one run folder and one table row: refuse them."""
    seen: dict[Any, float] = {}
    for f in fractions:
        for key in (("g", f"{f:g}"), ("r", round(float(f), 6))):
            if key in seen:
                raise SpecError(f"{where}: fractions {seen[key]!r} and {f!r} are equal to 6 decimals and would share "
                                f"one run folder (-f{f:g}); list each fraction once, differing within 6 decimals")
            seen[key] = f


def _check_world_size(spec: dict[str, Any], w: int, where: str) -> None:
    """``world_size`` processes per run must fit the machine: CUDA devices when the runs use CUDA, CPU cores
    otherwise."""
    import os

    import torch

    devices = {str(spec["base"].get("device", "auto"))}
    devices |= {str(e["device"]) for e in spec["objectives"].values() if isinstance(e, dict) and "device" in e}
    if any(d.startswith("cuda") or (d == "auto" and torch.cuda.is_available()) for d in devices):
        n = torch.cuda.device_count()
        if w > n:
            raise SpecError(f"{where}: world_size {w} needs {w} CUDA devices per run and this machine has {n}; "
                            f"set world_size to at most {max(n, 1)}" + ("" if n else " (or base device: cpu)"))
    else:
        n = os.cpu_count() or 1
        if w > n:
            raise SpecError(f"{where}: world_size {w} would start {w} processes per run on {n} CPU core(s); set "
                            f"world_size to at most {n}")


def _check_spec(spec: dict[str, Any], where: str) -> None:
    for key in ("name", "base", "objectives", "methods", "seeds"):
        if key not in spec:
            raise SpecError(f"{where} lacks {key!r}")
    _unknown(spec, SPEC_KEYS, where)
    name = spec["name"]
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise SpecError(f"{where}: name {name!r} must be a plain folder name (letters, digits, . _ -), since "
                        "results go to benchmarks/results/<name>")
    if not isinstance(spec["base"], dict):
        raise SpecError(f"{where}: base must be a mapping of config fields")
    objs = spec["objectives"]
    if not isinstance(objs, dict) or not objs:
        raise SpecError(f"{where}: objectives must be a non-empty mapping of name -> config fields")
    is_method = lambda m: m in METHODS  # noqa: E731
    is_frac = lambda f: isinstance(f, (int, float)) and not isinstance(f, bool)  # noqa: E731
    _check_list(spec["methods"], f"{where}: methods", is_method, f"methods from {sorted(METHODS)}")
    if "fractions" in spec:
        _check_list(spec["fractions"], f"{where}: fractions", is_frac, "numbers in (0, 1]")
        _check_distinct(spec["fractions"], f"{where}: fractions")
    _check_seeds(spec["seeds"], f"{where}: seeds")
    for key in ("jobs", "threads"):
        v = spec.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise SpecError(f"{where}: {key} must be an integer >= 1, got {v!r}")
    _check_probe(spec, where)
    for obj, entry in objs.items():
        w = f"{where}: objectives.{obj}"
        if not isinstance(obj, str) or not _SAFE_NAME.fullmatch(obj) or ".." in obj:
            raise SpecError(f"{w}: the name must be a plain folder name (letters, digits, . _ -)")
        if not isinstance(entry, dict):
            raise SpecError(f"{w} must be a mapping of config fields, got {entry!r:.60}")
        if "methods" in entry:
            _check_list(entry["methods"], f"{w}.methods", is_method, f"methods from {sorted(METHODS)}")
        if "fractions" in entry:
            _check_list(entry["fractions"], f"{w}.fractions", is_frac, "numbers in (0, 1]")
            _check_distinct(entry["fractions"], f"{w}.fractions")
        if isinstance(entry.get("seeds"), dict):  # per method: {gradmatch: [0, 1, 2]}, the others the spec's
            for m, ss in entry["seeds"].items():
                if m not in entry.get("methods", spec["methods"]):
                    raise SpecError(f"{w}.seeds names {m!r}, not one of the entry's methods "
                                    f"{entry.get('methods', spec['methods'])}")
                _check_seeds(ss, f"{w}.seeds.{m}")
        elif "seeds" in entry:
            _check_seeds(entry["seeds"], f"{w}.seeds")
        if not isinstance(entry.get("coreset", {}), dict):
            raise SpecError(f"{w}.coreset must be a mapping of config fields")
        _check_budget_entry(entry, w)
    if spec.get("reference") is not None and spec["reference"] not in objs:
        raise SpecError(f"{where}: reference {spec['reference']!r} is not one of the objectives {list(objs)}")
    w = spec.get("world_size", 1)
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        raise SpecError(f"{where}: world_size must be an integer >= 1 (processes per run), got {w!r}")
    if w > 1:
        _check_world_size(spec, w, where)
    t = spec.get("targets")
    if t is not None and (not isinstance(t, dict) or t.get("objective") not in objs or not is_frac(t.get("fraction"))):
        raise SpecError(f"{where}: targets must name one of the objectives {list(objs)} and a fraction")
    _check_budget_targets(spec, where)
