"""What only a CUDA device exercises: bf16 autocast, channels_last, CUDA-event timing. Skipped without a
GPU; ``benchmarks/gpu_check.sh`` runs them (``pytest -m cuda``)."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F

from advcoreset import load_config
from advcoreset.attacks import pgd
from advcoreset.models import create_model
from advcoreset.training import train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _data(n: int = 64, c: int = 3, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g).cuda(), torch.randint(0, 10, (n,), generator=g).cuda()


@pytest.fixture(autouse=True)
def _exact_fp32():
    # TF32 would make the fp32 reference itself approximate
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_channels_last_model_computes_what_the_contiguous_one_does():
    torch.manual_seed(0)
    model = create_model("preact_resnet18", 3, 10, 32).cuda().eval()
    x, _ = _data()
    ref = model(x)
    out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_loss_and_gradient_agree_with_fp32():
    torch.manual_seed(0)
    model = create_model("preact_resnet18", 3, 10, 32).cuda().train()
    x, y = _data()
    params = [p for p in model.parameters() if p.requires_grad]
    loss32 = F.cross_entropy(model(x), y)
    g32 = torch.cat([g.flatten() for g in torch.autograd.grad(loss32, params)])
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss16 = F.cross_entropy(model(x), y)
    g16 = torch.cat([g.flatten() for g in torch.autograd.grad(loss16, params)])
    assert loss16.dtype == torch.float32  # cross-entropy autocasts to fp32
    assert abs(loss16.item() - loss32.item()) < 0.05 * loss32.item()
    # bf16 keeps 8 mantissa bits: the direction agrees closely, not exactly
    assert torch.isfinite(g16).all() and F.cosine_similarity(g16.float(), g32, dim=0).item() > 0.9


@pytest.mark.parametrize(("norm", "eps"), [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_under_autocast_stays_in_the_ball_and_the_image(norm, eps):
    torch.manual_seed(0)
    model = create_model("preact_resnet18", 3, 10, 32).cuda().eval().to(memory_format=torch.channels_last)
    x, y = _data()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        adv = pgd(model, x, y, eps=eps, alpha=eps / 4, steps=5, norm=norm)
    assert adv.dtype == x.dtype and adv.min() >= 0 and adv.max() <= 1
    d = (adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert size.max().item() <= eps * (1 + 1e-5)
    with torch.no_grad():
        assert (model(adv).argmax(1) == y).float().mean() <= (model(x).argmax(1) == y).float().mean()


def test_training_run_on_cuda_times_every_part_within_the_wall_clock(tmp_path):
    """One epoch of a coreset run with amp and channels_last: the CUDA-event times it reports are positive
    and their sum is no more than the wall-clock the call took."""
    cfg = load_config(None, ["data.name=digits", "data.test_subset=100", "model.name=small_cnn", "model.width=8",
                             "device=cuda", "amp=true", "channels_last=true", "optim.epochs=2", "optim.batch_size=64",
                             "selection.method=gradmatch", "selection.fraction=0.5", "selection.warm_epochs=1",
                             "selection.interval=1", "eval.pgd_steps=3", "eval.every=0", "progress=none",
                             f"out_dir={tmp_path / 'run'}"])
    t0 = time.perf_counter()
    res = train(cfg)
    wall = time.perf_counter() - t0
    assert res["device"].startswith("cuda")
    assert 0 < res["time_train_total"] <= wall
    assert res["times"]["attack"] > 0 and res["times"]["update"] > 0
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    sel = [r for r in lines if r.get("kind") == "selection"]
    assert sel and all(s["grad_error"] is not None and s["grad_error"] < 1 for s in sel)
    assert 0 <= res["test_pgd3_acc"] <= res["test_clean_acc"] <= 1
