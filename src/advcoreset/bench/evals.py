"""Extra evaluations of a benchmark's finished runs, beyond the one PGD attack a training run ends with.

A spec names them under ``extra_evals``; each is an ``advcoreset eval`` of the run's ``last.pt`` on the
run's test set, written to ``RUN/eval_<name>.json`` and shown as a column of the table::

    extra_evals:
      pgd50x3: {pgd_steps: 50, restarts: 3, label: PGD-50x3}   # optional: n (test images), label
      aa: {autoattack: standard, n: 1000, runs: ["b7_full/*"]}  # AutoAttack on the first n test images

An AutoAttack entry (``autoattack``: standard, or fast = APGD-CE + APGD-T, labelled as such) fills the
table's AutoAttack column of the runs it evaluates instead of a column of its own (a run's own AutoAttack
comes first; where a run has several, the standard one); its PGD pass runs on the whole test set as the
run's did. ``runs`` limits an entry to the runs whose key (``objective/method-fFRACTION-sSEED``) matches
one of its shell patterns (default: every run). A run whose file exists is not evaluated again, so the
extra evaluations resume like the runs do.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from advcoreset.config import ConfigError
from advcoreset.training.run_folder import CHECKPOINT

_KEYS = {"pgd_steps", "restarts", "n", "label", "autoattack", "runs"}
AA_VERSIONS = ("standard", "fast")


class FinishedRun(Protocol):
    key: str
    folder: Path


def check_extra_evals(spec: dict[str, Any], path: str | Path) -> None:
    """Raise ``ConfigError`` naming the spec file and the entry if ``spec["extra_evals"]`` is malformed."""
    evals = spec.get("extra_evals")
    if evals is None:
        return
    if not isinstance(evals, dict):
        raise ConfigError(f"benchmark spec {path}: extra_evals must map names to settings, "
                          f"e.g. {{pgd50x3: {{pgd_steps: 50, restarts: 3}}}}")
    for name, ev in evals.items():
        where = f"benchmark spec {path}: extra_evals.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(name)):
            raise ConfigError(f"{where}: use letters, digits and '_' in the name (it becomes eval_<name>.json)")
        if not isinstance(ev, dict) or ("pgd_steps" in ev) == ("autoattack" in ev):
            raise ConfigError(f"{where} must be a mapping with pgd_steps (and optionally restarts, n, label, runs) "
                              f"or autoattack: standard|fast (and optionally n, runs)")
        unknown = sorted(set(ev) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(_KEYS)}")
        if "autoattack" in ev and ev["autoattack"] not in AA_VERSIONS:
            raise ConfigError(f"{where}.autoattack = {ev['autoattack']!r}: give one of {list(AA_VERSIONS)}")
        if "autoattack" in ev and ("restarts" in ev or "label" in ev):
            raise ConfigError(f"{where}: an autoattack entry takes n and runs only (its accuracy goes to the "
                              "AutoAttack column)")
        for key in ("pgd_steps", "restarts", "n"):
            value = ev.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}.{key} = {value!r}: give a positive integer")
        pats = ev.get("runs", ["*"])
        if not isinstance(pats, list) or not pats or not all(isinstance(p, str) and p for p in pats):
            raise ConfigError(f"{where}.runs = {pats!r}: give a non-empty list of run-key patterns, e.g. "
                              "['b7_full/*', 'b7_coreset/gradmatch-*']")


def applies(ev: dict[str, Any], key: str) -> bool:
    """Whether the extra evaluation ``ev`` is meant for the run with key ``key`` (its ``runs`` patterns)."""
    return any(fnmatch.fnmatchcase(key, p) for p in ev.get("runs", ["*"]))


def eval_command(folder: Path, ev: dict[str, Any], output: Path) -> list[str]:
    """The ``advcoreset eval`` command line of one extra evaluation of the run in ``folder``."""
    cmd = [sys.executable, "-m", "advcoreset.cli", "eval", str(folder), "--output", str(output)]
    if "autoattack" in ev:
        cmd += ["--autoattack", "--aa-version", ev["autoattack"]]
        return cmd + (["--aa-n", str(ev["n"])] if "n" in ev else [])
    cmd += ["--pgd-steps", str(ev["pgd_steps"]), "--restarts", str(ev.get("restarts", 1))]
    return cmd + (["--n", str(ev["n"])] if "n" in ev else [])


def _evaluate(run: FinishedRun, name: str, ev: dict[str, Any], log_dir: Path, threads: int | None) -> int:
    final = run.folder / f"eval_{name}.json"
    partial = final.with_suffix(".json.partial")  # renamed when complete: a killed eval leaves no result
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log = log_dir / (run.key.replace("/", "__") + f".eval_{name}.log")
    with open(log, "a") as f:
        rc = subprocess.run(eval_command(run.folder, ev, partial), stdout=f, stderr=subprocess.STDOUT,
                            env=env).returncode
    if rc == 0:
        partial.replace(final)
    return rc


def missing(run: FinishedRun, spec: dict[str, Any]) -> list[str]:
    """The names of the spec's extra evaluations meant for the finished ``run`` (a folder with
    ``results.json``) that it has no result of yet; [] for a run that is not finished."""
    evals = spec.get("extra_evals") or {}
    if not (run.folder / "results.json").exists():
        return []
    return [name for name, ev in evals.items()
            if applies(ev, run.key) and not (run.folder / f"eval_{name}.json").exists()]


def without_checkpoint(runs: list[Any], spec: dict[str, Any]) -> list[Any]:
    """The finished runs of ``runs`` that miss an extra evaluation and have no ``last.pt`` to evaluate (a
    study in a fresh checkout keeps the run records, not the checkpoints): ``bench --retrain`` trains them
    again."""
    return [r for r in runs if missing(r, spec) and not (r.folder / CHECKPOINT).exists()]


def run_extra_evals(runs: list[Any], spec: dict[str, Any], out: Path, jobs: int) -> list[str]:
    """Evaluate every finished run of ``runs`` that lacks one of the spec's extra evaluations, ``jobs`` at a
    time; returns "<run key>:<eval name>" for each that failed (its log is in ``out/logs``) or could not run
    (no checkpoint: named in one line, not attempted)."""
    evals = spec.get("extra_evals") or {}
    gone = without_checkpoint(runs, spec)
    if gone:
        print(f"bench: no {CHECKPOINT} to evaluate in {len(gone)} finished runs (a checkout keeps a run's record, "
              f"not its checkpoint): {', '.join(r.key for r in gone)}; bench --retrain trains them again first",
              flush=True)
    failed = [f"{r.key}:{name}" for r in gone for name in missing(r, spec)]
    gone_keys = {r.key for r in gone}
    todo = [(r, name) for r in runs if r.key not in gone_keys for name in missing(r, spec)]
    if not todo:
        return failed
    print(f"bench: {len(todo)} extra evaluations to run ({jobs} at a time)", flush=True)
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = pool.map(lambda t: (t, _evaluate(t[0], t[1], evals[t[1]], log_dir, spec.get("threads"))), todo)
        for i, ((run, name), rc) in enumerate(results, 1):
            print(f"[{i}/{len(todo)}] {run.key} eval {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'}",
                  flush=True)
            if rc != 0:
                failed.append(f"{run.key}:{name}")
    return failed
