"""Per-epoch metrics: JSON lines (always), TensorBoard (optional), a line or a bar on the console."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends one JSON object per record to ``metrics.jsonl`` (flushed at once, so a killed run keeps
    every finished epoch); mirrors scalars to TensorBoard when asked and available."""

    def __init__(self, out_dir: Path, tensorboard: bool = False) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("tensorboard=true needs the tensorboard package: "
                                  "pip install tensorboard") from e
            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def truncate_after(self, epoch: int) -> None:
        """On resume: drop records of epochs after ``epoch`` (written by the killed run after its last
        checkpoint) so the log matches the restored state."""
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("epoch", -1) <= epoch]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
        if self.tb is not None:
            step = record.get("epoch", 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(f"{record.get('kind', 'epoch')}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _jsonable(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def progress_mode(setting: str) -> str:
    """auto -> bar on a terminal, line otherwise (CI logs stay quiet)."""
    if setting != "auto":
        return setting
    return "bar" if sys.stderr.isatty() else "line"
