"""bf16 autocast against fp32 on this machine: a training epoch and a selection pass, as a ratio in one run.

    python benchmarks/amp_speed.py [--n 6400] [--repeats 3] [--out benchmarks/results/amp]

Three ``Trainer``s on the same data and initial weights: ``amp=false`` (fp32, contiguous layout: today's
CPU run), the same in channels_last (what the layout alone buys), and ``amp=true`` (bf16 autocast in
channels_last; refused on a CPU without native bf16). Each repeat times, in alternating order so that a drift of the
machine's speed falls on both alike: one PGD-7 training epoch (``Trainer.train_epoch`` on ``n`` images) and
one selection pass (``CoresetLoader.gradients``: the 1-step selection attack and last-layer gradients of
the full-scale study). The fastest repeat of each counts. Also written: how far the bf16 selection
gradients are from the fp32 ones (relative Frobenius error) and the overlap of the GradMatch coresets
chosen from each. Writes ``speed.json`` and ``speed.md`` under ``--out``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from advcoreset.config_checks import load_config
from advcoreset.precision import cpu_bf16_native
from advcoreset.selection import build_selector
from advcoreset.training import Trainer


def _trainer(args: argparse.Namespace, amp: bool, channels_last: bool = False) -> Trainer:
    cfg = load_config(None, [f"data.train_subset={args.n}", "data.augment=none", f"device={args.device}",
                             f"amp={str(amp).lower()}", "selection.attack_steps=1", "progress=none",
                             f"optim.batch_size={args.batch_size}", f"out_dir=/tmp/amp_speed_{amp}"])
    t = Trainer(cfg)
    if channels_last:  # fp32 in the layout bf16 runs use: what the layout alone buys
        t.model.to(memory_format=torch.channels_last)
        t.loader.source.memory_format = torch.channels_last  # type: ignore[attr-defined]
    return t


def _timed(fn: Any, device: str) -> float:
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _overlap(t32: Trainer, g32: torch.Tensor, g16: torch.Tensor, fraction: float) -> float:
    """|S_fp32 & S_bf16| / |S_fp32| of the GradMatch coresets chosen from each precision's gradients."""
    cfg = load_config(None, ["selection.method=gradmatch", f"selection.fraction={fraction}"])
    chosen = []
    for g in (g32, g16):
        sel = build_selector(cfg.selection, 0).select(g, t32.labels, torch.Generator().manual_seed(0))
        chosen.append(set(sel.indices.tolist()))
    return len(chosen[0] & chosen[1]) / max(len(chosen[0]), 1)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    trainers = {"fp32": _trainer(args, False), "fp32_channels_last": _trainer(args, False, True),
                "bf16": _trainer(args, True)}
    for p in ("fp32_channels_last", "bf16"):
        trainers[p].model.load_state_dict(trainers["fp32"].model.state_dict())
    n = trainers["fp32"].labels.numel()
    idx, w = torch.arange(n), torch.ones(n)
    times: dict[str, dict[str, list[float]]] = {p: {"epoch": [], "selection": []} for p in trainers}
    for r in range(args.repeats):
        order = list(trainers) if r % 2 == 0 else list(reversed(trainers))
        for p in order:
            t = trainers[p]
            times[p]["epoch"].append(_timed(lambda t=t: t.train_epoch(idx, w), args.device))
            times[p]["selection"].append(_timed(lambda t=t: t.loader.gradients(), args.device))
    # gradients of one and the same model in both precisions
    trainers["bf16"].model.load_state_dict(trainers["fp32"].model.state_dict())
    torch.manual_seed(0)
    g32 = trainers["fp32"].loader.gradients()
    torch.manual_seed(0)
    g16 = trainers["bf16"].loader.gradients()
    best = {p: {k: min(v) for k, v in d.items()} for p, d in times.items()}
    return {
        "what": f"small_cnn, Fashion-MNIST {n} images, batch {args.batch_size}, PGD-7 training epoch and "
                f"1-step selection pass, fastest of {args.repeats} alternating repeats",
        "device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu_bf16_native": cpu_bf16_native(), "machine": platform.processor() or platform.machine(),
        "seconds": times, "best": best,
        "speedup": {k: best["fp32"][k] / best["bf16"][k] for k in ("epoch", "selection")},
        "speedup_layout_only": {k: best["fp32"][k] / best["fp32_channels_last"][k] for k in ("epoch", "selection")},
        "grad_rel_error": float((g16 - g32).norm() / g32.norm()),
        "gradmatch_overlap": {str(f): _overlap(trainers["fp32"], g32, g16, f) for f in (0.1, 0.3)},
    }


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"`python benchmarks/amp_speed.py` ({r['what']}; {r['device']}, {r['threads']} threads, torch "
             f"{r['torch']}, native CPU bf16: {r['cpu_bf16_native']})", "",
             "| part | fp32 s | fp32 channels_last s | bf16 (amp: true) s | speed-up of amp: true | of the layout "
             "alone |", "|---|---|---|---|---|---|"]
    for k in ("epoch", "selection"):
        b = r["best"]
        lines.append(f"| {k} | {b['fp32'][k]:.2f} | {b['fp32_channels_last'][k]:.2f} | {b['bf16'][k]:.2f} | "
                     f"{r['speedup'][k]:.2f}x | {r['speedup_layout_only'][k]:.2f}x |")
    ov = ", ".join(f"{f}: {v:.3f}" for f, v in r["gradmatch_overlap"].items())
    lines += ["", f"Selection gradients, bf16 against fp32 (same weights): relative error "
              f"{r['grad_rel_error']:.4f}; overlap of the GradMatch coresets chosen from each (fraction: share "
              f"of the fp32 set also chosen in bf16): {ov}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6400, help="training images per timed epoch and selection pass")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/amp")
    args = ap.parse_args()
    result = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "speed.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
