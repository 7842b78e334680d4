"""Where a PGD-AT step stops waiting on the host: time per step of PreAct ResNet-18 PGD-7 AT against the batch.

    python benchmarks/gpu_batch_scaling.py --device cuda --out benchmarks/results/gpu_check/batch_scaling
    python benchmarks/gpu_batch_scaling.py --device cuda --compile ...   # also torch.compile'd, at 128 and 512

One adversarial-training step = PGD-7 (l_inf, eps 8/255, step 2/255) on a batch of random 3x32x32 images,
then a cross-entropy update with SGD, the model in channels_last and the step under bf16 autocast (as
``advcoreset train`` runs it on CUDA with ``amp: auto``). For each batch size: the median of ``--repeats``
timed steps after ``--warmup`` untimed ones, as ms per step and images/s. Where the time per step hardly
grows with the batch, the step is bound by kernel launches and Python, not by the GPU's arithmetic
(benchmarks/README.md, "GPU check"). Writes ``batch_scaling.json`` and ``batch_scaling.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from advcoreset.attacks import pgd
from advcoreset.models import create_model

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 7


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_step(model: torch.nn.Module, batch: int, device: str, amp: bool, warmup: int, repeats: int) -> float:
    """Median seconds of one PGD-7 AT step at ``batch`` images."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            x_adv = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=STEPS)
            loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    rows = []
    variants = [("eager", False)] + ([("compiled", True)] if args.compile else [])
    for name, compiled in variants:
        model = create_model("preact_resnet18", 3, 10, 32).to(args.device).to(memory_format=torch.channels_last)
        model.train()
        run_model = torch.compile(model) if compiled else model
        for b in (args.compile_batches if compiled else args.batches):
            t0 = time.perf_counter()
            secs = time_step(run_model, b, args.device, not args.fp32, args.warmup, args.repeats)
            rows.append({"model": name, "batch": b, "ms_per_step": 1e3 * secs, "images_per_s": b / secs,
                         "ms_per_attack_pass": 1e3 * secs / (STEPS + 1),
                         "wall_seconds": time.perf_counter() - t0})
            print(json.dumps(rows[-1]), flush=True)
    info = {"device": args.device, "torch": torch.__version__, "precision": "fp32" if args.fp32 else "bf16",
            "warmup": args.warmup, "repeats": args.repeats, "rows": rows}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"`python benchmarks/gpu_batch_scaling.py --device {r['device']}` ({r.get('gpu', r['device'])}, torch "
             f"{r['torch']}, {r['precision']}, median of {r['repeats']} steps after {r['warmup']})", "",
             "| model | batch | ms per step | ms per forward-backward pass | images/s |", "|---|---|---|---|---|"]
    lines += [f"| {row['model']} | {row['batch']} | {row['ms_per_step']:.1f} | {row['ms_per_attack_pass']:.2f} | "
              f"{row['images_per_s']:.0f} |" for row in r["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[64, 128, 256, 512, 1024, 2048])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--fp32", action="store_true", help="no autocast (default bf16)")
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd model")
    ap.add_argument("--compile-batches", type=lambda s: [int(v) for v in s.split(",")], default=[128, 512],
                    help="the batches of the compiled model (each new shape compiles again)")
    ap.add_argument("--out", default="benchmarks/results/gpu_check/batch_scaling")
    args = ap.parse_args()
    result = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "batch_scaling.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "batch_scaling.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
