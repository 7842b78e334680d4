"""GPU check (issue 14, point 7): PGD-AT throughput of PreAct ResNet-18 on 32x32 RGB data, full data against
a 30% GradMatch coreset with one selection round (and the full epoch again in fp32 and at batch 512), written
as JSON. Run through ``benchmarks/gpu_check.sh``.

Data: CIFAR-10's python batches if ``--cifar-root`` holds them; else Fashion-MNIST padded to 32x32 and
replicated to 3 channels (written as CIFAR-format batches, so the ordinary ``cifar10`` loader reads them);
else random images (throughput does not depend on the pixels; the JSON says which was used).

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check [--cifar-root DIR] [--fmnist-root DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

EPS, ALPHA = 8 / 255, 2 / 255
COMMON = [
    "data.name=cifar10", "data.test_subset=1000", "data.val_size=0", "data.augment=crop_flip",
    "model.name=preact_resnet18", "objective.name=pgd", "objective.attack.norm=linf",
    f"objective.attack.eps={EPS}", f"objective.attack.alpha={ALPHA}", "objective.attack.steps=7",
    "optim.epochs=1", "optim.batch_size=128", "optim.lr=0.1", "optim.schedule=onecycle",
    "eval.pgd_steps=10", f"eval.pgd_alpha={ALPHA}", "eval.every=0", "eval.autoattack=false",
    "device=cuda", "amp=true", "channels_last=true", "progress=line",
]
RUNS = {
    "full": ["selection.method=full"],
    # the same epoch in fp32 (no autocast) and at batch 512: what bf16 and a larger batch buy on this GPU
    "full_fp32": ["selection.method=full", "amp=false"],
    "full_batch512": ["selection.method=full", "optim.batch_size=512"],
    # warm_epochs=0: the one epoch is a selection round (PGD-7 pass over all images + GradMatch) and then
    # one epoch on the 30% coreset, so it is measured without repeating the full epoch above
    "coreset": ["selection.method=gradmatch", "selection.fraction=0.3", "selection.warm_epochs=0",
                "selection.interval=1"],
}


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    return next((p for p in (root / stem, root / f"{stem}.gz") if p.is_file()), None)


def _write_cifar(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> None:
    """CIFAR-10 python batches of (N, 3, 32, 32) uint8 images: the train set split over data_batch_1..5."""
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, x: np.ndarray, y: np.ndarray) -> None:
        batch = {b"data": np.ascontiguousarray(x.reshape(len(x), -1)), b"labels": [int(v) for v in y]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))

    for i, (xs, ys) in enumerate(zip(np.array_split(train[0], 5), np.array_split(train[1], 5), strict=True), 1):
        dump(f"data_batch_{i}", xs, ys)
    dump("test_batch", *test)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"class{i}" for i in range(10)]},
                                                       protocol=2))


def _to_rgb32(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) -> (N, 3, 32, 32): zero-padded by 2 on each side, the grey plane copied to R, G and B."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[:, None], 3, axis=1)


def prepare_data(cifar_root: Path | None, fmnist_root: Path, scratch: Path) -> tuple[Path, str]:
    """(data.root for the cifar10 loader, a line saying which data it holds)."""
    if cifar_root is not None and any((d / "data_batch_1").is_file() for d in (cifar_root, cifar_root /
                                                                               "cifar-10-batches-py")):
        return cifar_root, f"CIFAR-10 from {cifar_root}"
    folder = scratch / "cifar-10-batches-py"
    paths = {s: _find(fmnist_root, s) for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    if all(paths.values()):
        x, y, xt, yt = (_read_idx(p) for p in paths.values())  # type: ignore[arg-type]
        _write_cifar(folder, (_to_rgb32(x), y), (_to_rgb32(xt), yt))
        return scratch, f"Fashion-MNIST from {fmnist_root}, padded to 32x32 and replicated to 3 channels"
    rng = np.random.default_rng(0)
    _write_cifar(folder, (rng.integers(0, 256, (50000, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 50000)),
                 (rng.integers(0, 256, (1000, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 1000)))
    return scratch, "random uint8 images (no CIFAR-10 or Fashion-MNIST files found)"


def train_run(name: str, root: Path, out: Path) -> dict[str, Any]:
    """Train one RUNS entry with ``advcoreset train``; its throughputs from results.json and metrics.jsonl."""
    folder = out / "runs" / name
    cmd = [sys.executable, "-m", "advcoreset.cli", "train", "--out", str(folder)]
    for s in [*COMMON, f"data.root={root}", *RUNS[name]]:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        return {"error": f"advcoreset train exited {rc}; see {out / f'{name}.log'}"}
    lines = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    epoch = next(r for r in lines if r.get("kind") == "epoch")
    res = json.loads((folder / "results.json").read_text())
    row: dict[str, Any] = {"process_seconds": time.perf_counter() - t0, "epoch_images": epoch["n_train"],
                           "epoch_seconds": epoch["time_epoch_wall"],
                           "epoch_images_per_s": epoch["n_train"] / epoch["time_epoch_wall"],
                           "test_clean_acc": res.get("test_clean_acc"), "device": res.get("device")}
    sel = next((r for r in lines if r.get("kind") == "selection"), None)
    if sel is not None:
        secs = sel["time_selection_attack"] + sel["time_selection_solver"]
        row.update({"selection_images": sel["train_size"], "coreset_size": sel["coreset_size"],
                    "selection_attack_seconds": sel["time_selection_attack"],
                    "selection_solver_seconds": sel["time_selection_solver"],
                    "selection_images_per_s": sel["train_size"] / secs, "grad_error": sel["grad_error"]})
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/gpu_check")
    ap.add_argument("--cifar-root", type=Path, default=None)
    ap.add_argument("--fmnist-root", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--tests-rc", type=int, default=None, help="exit status of the CUDA-marked tests")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; nothing measured", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="advcoreset_gpu_check_") as scratch:
        root, source = prepare_data(args.cifar_root, args.fmnist_root, Path(scratch))
        runs = {name: train_run(name, root, out) for name in RUNS}
    report: dict[str, Any] = {
        "what": "PreAct ResNet-18, l_inf PGD-7 AT (eps 8/255, step 2/255), batch 128, bf16 autocast, channels_last",
        "data": source, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(), "cuda_tests_rc": args.tests_rc,
        "runs": runs,
    }
    full, core = runs.get("full", {}), runs.get("coreset", {})
    if "epoch_seconds" in full and "epoch_seconds" in core and "selection_attack_seconds" in core:
        round_s = core["selection_attack_seconds"] + core["selection_solver_seconds"]
        report["coreset_epoch_vs_full_epoch"] = core["epoch_seconds"] / full["epoch_seconds"]
        report["selection_round_vs_full_epoch"] = round_s / full["epoch_seconds"]
    for name, key in (("full_fp32", "fp32_epoch_vs_bf16_epoch"), ("full_batch512", "batch512_epoch_vs_batch128_epoch")):
        if "epoch_seconds" in full and "epoch_seconds" in runs.get(name, {}):
            report[key] = runs[name]["epoch_seconds"] / full["epoch_seconds"]
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if all("error" not in r for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
