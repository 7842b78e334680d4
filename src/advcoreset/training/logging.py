"""Per-epoch metrics: JSON lines (always), TensorBoard (optional), a line or a bar on the console."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends one JSON object per record to ``metrics.jsonl`` (flushed at once, so a killed run keeps
    every finished epoch); mirrors scalars to TensorBoard when asked and available.

    TensorBoard gets each per-epoch scalar once it has changed value (earlier points are written then):
    a scalar that never changes, such as ``test_eps``, is a setting, not a curve, and is left out. The final
    record is logged once as hyper-parameters (the resolved ``config.yaml`` beside the log, flattened to
    dotted keys) with its accuracies as the metrics."""

    def __init__(self, out_dir: Path, tensorboard: bool = False) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        self._held: dict[str, list[tuple[int, float]]] = {}
        self._live: set[str] = set()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("tensorboard=true needs the tensorboard package: "
                                  "pip install tensorboard") from e
            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def truncate_after(self, epoch: int) -> None:
        """On resume: drop records of epochs after ``epoch`` (written by the killed run after its last
        checkpoint), any ``final`` record (resuming reruns the final evaluation, which writes a new one) and a
        partial last line (a kill mid-write), so the log matches the restored state."""
        if not self.path.exists():
            return
        records = read_metrics(self.path, drop_partial_last=True)
        keep = [r for r in records if isinstance(r.get("epoch", -1), int) and r.get("epoch", -1) <= epoch
                and r.get("kind") != "final"]
        self.path.write_text("".join(json.dumps(r, default=_jsonable) + "\n" for r in keep))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
        if self.tb is not None:
            if record.get("kind") == "final":
                self._hparams(record)
            else:
                self._scalars(record)
            self.tb.flush()

    def _scalars(self, record: dict[str, Any]) -> None:
        assert self.tb is not None  # only write() calls it, when TensorBoard is on
        step = int(record.get("epoch", 0))
        for k, v in _numbers(record).items():
            if k == "epoch":
                continue
            tag = f"{record.get('kind', 'epoch')}/{k}"
            if tag in self._live:
                self.tb.add_scalar(tag, v, step)
                continue
            held = self._held.setdefault(tag, [])
            held.append((step, v))
            if v != held[0][1]:
                for s, x in self._held.pop(tag):
                    self.tb.add_scalar(tag, x, s)
                self._live.add(tag)

    def _hparams(self, record: dict[str, Any]) -> None:
        assert self.tb is not None  # only write() calls it, when TensorBoard is on
        import yaml

        cfg_path = self.path.parent / "config.yaml"
        cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
        metrics = {f"final/{k}": v for k, v in _numbers(record).items() if k.endswith("_acc")}
        # run_name ".": the hyper-parameters land in this run's own folder, not in a timestamped subfolder
        self.tb.add_hparams(flatten_hparams(cfg or {}), metrics, run_name=".",
                            global_step=int(record.get("epoch", 0)))

    def close(self) -> None:
        if self.tb is not None:
            # A scalar seen once (a one-epoch run) is a curve of one point, not a constant: keep it.
            for tag, held in self._held.items():
                if len(held) == 1:
                    self.tb.add_scalar(tag, held[0][1], held[0][0])
            self._held.clear()
            self.tb.close()


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flatten_hparams(cfg: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config as TensorBoard hyper-parameters: dotted keys; None and lists as strings."""
    out: dict[str, bool | int | float | str] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_hparams(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def _jsonable(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


class MetricsError(ValueError):
    """metrics.jsonl holds a line that is not a JSON object; the message names the file and the line."""


def read_metrics(path: str | Path, drop_partial_last: bool = False) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``. ``drop_partial_last``: a last line cut short (a run killed while
    writing it; it belongs to an epoch after the checkpoint) is dropped instead of being an error."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise MetricsError(f"{path} is not a text file of JSON lines; remove it or restore the run's own") from None
    out = []
    numbered = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
    for j, (i, ln) in enumerate(numbered):
        try:
            rec = json.loads(ln)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            if drop_partial_last and j == len(numbered) - 1:
                break
            raise MetricsError(f"{path}, line {i}, is not a JSON record ({ln[:40]!r}); remove that line, or "
                               "the file, to go on")
        out.append(rec)
    return out


def progress_mode(setting: str) -> str:
    """auto -> bar on a terminal, line otherwise (CI logs stay quiet)."""
    if setting != "auto":
        return setting
    return "bar" if sys.stderr.isatty() else "line"
