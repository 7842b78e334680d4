"""Built-in runs give bit-identical weights to the code before the API refactor (issue 10).

The AVX2 hashes below were recorded on the unchanged trainer (commit 57a5467), the AVX512 ones with the tree
before the one-house renovation (commit bd60d7e), for two tiny fp32 CPU runs on scikit-learn's digits (CRAIG
and GradMatch, both with ``optim.weight_norm=resample``). Float results can differ between PyTorch versions
and CPU instruction sets, so the test compares only where a recording matches and skips elsewhere, saying
why.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from advcoreset.checkpoint import load_checkpoint
from advcoreset.config_checks import load_config
from advcoreset.training import train

RECORDED = {
    ("2.13.0+cpu", "AVX2"): {
        "craig": "2bdb9c70a0b0232ca3e7ea653d546a2086aeb0f1a2eb165b906a714241faffc0",
        "gradmatch": "065a10eac2ca83ea60f8290f44e38efdc4f263218c0fad0f34fa12f8135e8e15",
    },
    # recorded with the tree before the one-house renovation (commit bd60d7e), fp32
    ("2.13.0+cpu", "AVX512"): {
        "craig": "332fca16dfa625760ff67e2cff39848539e1273f32a52dd83ba0b5eee115c9ba",
        "gradmatch": "56035073da6aa3551dee493ca5738f7418267ffdc39a689e5a131def8a1622cc",
    },
}
"""Final-weight hashes by (torch version, CPU capability); the runs are fp32 (``amp=false``) everywhere."""


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes, in the state dict's key order."""
    h = hashlib.sha256()
    for k, v in state.items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def run_hash(tmp_path, method: str) -> str:
    cfg = load_config(None, [
        "data.name=digits", "data.test_subset=100", "data.val_size=50", "data.augment=crop",
        "data.crop_padding=1", "model.width=8", "objective.attack.eps=0.1", "objective.attack.alpha=0.04",
        "objective.attack.steps=2", f"selection.method={method}", "selection.fraction=0.3",
        "selection.warm_epochs=1", "selection.interval=1", "selection.attack_steps=null",
        "optim.weight_norm=resample", "optim.epochs=4",
        "optim.batch_size=64", "optim.lr=0.1", "eval.pgd_steps=2", "eval.val_pgd_steps=2", "eval.every=1",
        "progress=none", "threads=1", "device=cpu", "amp=false", f"out_dir={tmp_path / method}"])
    train(cfg)
    return state_hash(load_checkpoint(tmp_path / method / "last.pt")["model"])


@pytest.mark.parametrize("method", ["craig", "gradmatch"])
def test_final_weights_match_the_recording(tmp_path, method):
    here = (torch.__version__, torch.backends.cpu.get_cpu_capability())
    if here not in RECORDED:
        pytest.skip(f"hashes were recorded for {sorted(RECORDED)}; this is torch {here[0]} on {here[1]}, where "
                    "float results may legitimately differ")
    assert run_hash(tmp_path, method) == RECORDED[here][method]
