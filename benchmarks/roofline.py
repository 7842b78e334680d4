"""Roofline of a study's parts: counted FLOPs, the machine's measured peak, and the fraction each part uses.

    python benchmarks/roofline.py [--device cpu|cuda] [--out benchmarks/results/roofline]

1. FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` around one call of each
   part (matrix products and convolutions, forward and backward, as torch dispatches them).
2. Peak: the best rate of a large GEMM (2048^3) and of a convolution shaped like the small CNN's second
   layer at a large batch, each in fp32 and bf16 (bf16 in channels_last, as the library runs it).
3. Achieved: the same parts timed as the library runs them, in each precision the library offers for them:
   - ``train_step``: one PGD-7 adversarial-training step (attack + weighted update) at batch 128,
     ``Trainer.train_epoch`` on 1,280 images;
   - ``selection``: the selection pass (1-step attack + closed-form last-layer gradients) on 1,280 images;
   - ``eval_pgd``: PGD-20 on 500 test images (fp32: evaluation never runs in bf16);
   - ``eval_forward``: forward passes at batch 500 as Square / clean accuracy make them (fp32).
   Each is the fastest of ``--repeats``; the fraction of the machine is achieved / peak of that precision.

Writes ``roofline.json`` and ``roofline.md`` under ``--out``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from advcoreset.config_checks import load_config
from advcoreset.evaluation import pgd_accuracy
from advcoreset.precision import cpu_bf16_native
from advcoreset.training import Trainer


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_seconds(fn: Callable[[], Any], device: str, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peaks(device: str, repeats: int) -> dict[str, dict[str, float]]:
    """GFLOP/s of a 2048^3 GEMM and of a 64->64 3x3 convolution on (512, 64, 14, 14), fp32 and bf16."""
    out: dict[str, dict[str, float]] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(2048, 2048, device=device, dtype=dtype)
        b = torch.randn(2048, 2048, device=device, dtype=dtype)
        fmt = torch.channels_last if dtype is torch.bfloat16 else torch.contiguous_format
        x = torch.randn(512, 64, 14, 14, device=device, dtype=dtype).contiguous(memory_format=fmt)
        w = torch.randn(64, 64, 3, 3, device=device, dtype=dtype).contiguous(memory_format=fmt)
        gemm = lambda a=a, b=b: a @ b  # noqa: E731
        conv = lambda x=x, w=w: F.conv2d(x, w, padding=1)  # noqa: E731
        out[name] = {k: count_flops(f) / best_seconds(f, device, repeats) / 1e9
                     for k, f in (("gemm", gemm), ("conv", conv))}
    return out


def _trainer(device: str, amp: bool, n: int, root: str | None) -> Trainer:
    cfg = load_config(None, [f"data.train_subset={n}", "data.augment=none", f"device={device}",
                             *([f"data.root={root}"] if root else []),
                             f"amp={str(amp).lower()}", "selection.attack_steps=1", "progress=none",
                             "optim.batch_size=128", "out_dir=/tmp/roofline_run"])
    return Trainer(cfg)


def parts(device: str, repeats: int, n: int, root: str | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    precisions = ["fp32"] + (["bf16"] if device.startswith("cuda") or cpu_bf16_native() else [])
    fp32_trainer = None
    for prec in precisions:
        t = _trainer(device, prec == "bf16", n, root)
        if fp32_trainer is None:
            fp32_trainer = t
        for name, fn in (("train_step", lambda t=t: t.train_epoch(torch.arange(n), torch.ones(n))),
                         ("selection", lambda t=t: t.loader.gradients())):
            rows.append({"part": name, "precision": prec, "images": n, "flops": count_flops(fn),
                         "seconds": best_seconds(fn, device, repeats)})
    assert fp32_trainer is not None
    model = fp32_trainer.model.eval()
    images, labels = fp32_trainer.run_data.test
    x, y = images[:500], labels[:500]
    pgd = lambda: pgd_accuracy(model, x, y, eps=0.1, alpha=0.01, steps=20, batch_size=500)  # noqa: E731

    def forward() -> None:
        with torch.no_grad():
            model(x.to(device).float() / 255)

    for name, fn in (("eval_pgd", pgd), ("eval_forward", forward)):
        rows.append({"part": name, "precision": "fp32", "images": 500, "flops": count_flops(fn),
                     "seconds": best_seconds(fn, device, repeats)})
    return rows


def measure(args: argparse.Namespace) -> dict[str, Any]:
    peak = peaks(args.device, args.repeats)
    rows = parts(args.device, args.repeats, args.n, args.data_root)
    for r in rows:
        r["gflops_per_s"] = r["flops"] / r["seconds"] / 1e9
        r["flops_per_image"] = r["flops"] / r["images"]
        p = peak[r["precision"]]
        r["of_gemm_peak"] = r["gflops_per_s"] / p["gemm"]
        r["of_conv_peak"] = r["gflops_per_s"] / p["conv"]
    return {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_bf16_native": cpu_bf16_native(), "repeats": args.repeats, "peak_gflops_per_s": peak,
            "parts": rows}


def to_markdown(r: dict[str, Any]) -> str:
    p = r["peak_gflops_per_s"]
    lines = [f"`python benchmarks/roofline.py --device {r['device']}` ({r['threads']} threads, torch {r['torch']}, "
             f"native CPU bf16: {r['cpu_bf16_native']}; fastest of {r['repeats']})", "",
             "Measured peak, GFLOP/s: " + "; ".join(f"{k}: GEMM {v['gemm']:.0f}, convolution {v['conv']:.0f}"
                                                   for k, v in p.items()), "",
             "| part | precision | MFLOP per image | GFLOP/s | of GEMM peak | of conv peak |",
             "|---|---|---|---|---|---|"]
    for row in r["parts"]:
        lines.append(f"| {row['part']} | {row['precision']} | {row['flops_per_image'] / 1e6:.1f} | "
                     f"{row['gflops_per_s']:.1f} | {100 * row['of_gemm_peak']:.0f}% | "
                     f"{100 * row['of_conv_peak']:.0f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=1280, help="training images per timed epoch / selection pass")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/roofline")
    ap.add_argument("--data-root", help="folder of the Fashion-MNIST IDX files (default: the library's)")
    args = ap.parse_args()
    result = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "roofline.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "roofline.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
