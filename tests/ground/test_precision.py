"""bf16 autocast on the CPU: what ``amp`` resolves to, the CPU probe, bf16 training with fp32 evaluation,
and resume refusing a change of precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from advcoreset.checkpoint import load_checkpoint, save_atomic
from advcoreset.config import ConfigError
from advcoreset.config_checks import load_config
from advcoreset.evaluation import accuracy
from advcoreset.precision import (
    CPU_BF16_BY_DEFAULT,
    PrecisionError,
    _cpuinfo_has_bf16,
    cpu_bf16_native,
    legacy_precision,
    resolve_precision,
)
from advcoreset.training import Trainer, TrainingError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
needs_bf16 = pytest.mark.skipif(not cpu_bf16_native(), reason="this CPU has no native bf16")


@pytest.mark.parametrize(("amp", "device", "native", "expected"), [
    (False, CPU, True, "fp32"), (False, CUDA, True, "fp32"),
    (True, CPU, True, "bf16"), (True, CUDA, False, "bf16"),
    ("auto", CUDA, False, "bf16"), ("auto", CPU, False, "fp32"),
    ("auto", CPU, True, "bf16" if CPU_BF16_BY_DEFAULT else "fp32"),
])
def test_amp_resolves_by_device_and_cpu(amp, device, native, expected) -> None:
    p = resolve_precision(amp, device, cpu_native=native)
    assert p.name == expected
    assert (p.dtype is torch.bfloat16) == (expected == "bf16")


def test_amp_true_is_refused_on_a_cpu_without_native_bf16() -> None:
    with pytest.raises(PrecisionError, match="amp: true.*no native bf16.*amp: auto or amp: false"):
        resolve_precision(True, CPU, cpu_native=False)
    assert issubclass(PrecisionError, ConfigError)  # the CLI prints it as bad input, exit 2


@pytest.mark.parametrize("bad", ["2", "bf16", "'true'", "null", "[true]"])
def test_config_refuses_other_amp_values(bad: str) -> None:
    with pytest.raises(ConfigError, match="amp"):
        load_config(None, [f"amp={bad}"])


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), ("true", True), ("false", False)])
def test_config_accepts_amp_values(value: str, expected: object) -> None:
    amp = load_config(None, [f"amp={value}"]).amp
    assert amp == expected and type(amp) is type(expected)


def test_cpuinfo_flags_are_read(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n")
    assert _cpuinfo_has_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_vnni\n")
    assert not _cpuinfo_has_bf16(info)
    info.write_text("flags\t\t: fpu amx_tile amx_bf16\n")
    assert _cpuinfo_has_bf16(info)
    assert not _cpuinfo_has_bf16(tmp_path / "missing")


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="no /proc/cpuinfo")
def test_torch_probe_agrees_with_the_kernels_flags() -> None:
    assert cpu_bf16_native() == _cpuinfo_has_bf16(Path("/proc/cpuinfo"))


def test_legacy_checkpoints_were_bf16_only_on_cuda() -> None:
    assert legacy_precision(True, CPU) == "fp32"
    assert legacy_precision(True, CUDA) == "bf16"
    assert legacy_precision(False, CUDA) == "fp32"


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(None, [
        "data.name=digits", "data.test_subset=300", "data.augment=none", "model.width=16",
        "objective.attack.eps=0.1", "objective.attack.alpha=0.04", "objective.attack.steps=2",
        "selection.method=gradmatch", "selection.fraction=0.5", "selection.warm_epochs=1", "selection.interval=1",
        "optim.epochs=3", "optim.batch_size=64", "optim.lr=0.2", "eval.pgd_steps=3", "progress=none",
        "threads=1", f"out_dir={tmp_path / 'run'}", *overrides])


@needs_bf16
def test_bf16_training_computes_in_bf16_and_evaluates_in_fp32(tmp_path: Path) -> None:
    t = Trainer(_cfg(tmp_path, "amp=true"))
    assert t.precision.name == "bf16"
    assert t.model.stages[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = t.loader.source.sample(4)
    with t.parts.autocast():
        assert t.model(x).dtype == torch.bfloat16  # the training step's forward runs in bf16
    res = t.run()
    assert res["precision"] == {"train": "bf16", "selection": "bf16", "eval": "fp32"}
    assert res["test_clean_acc"] > 0.5  # it learns (chance is 0.1)
    # the recorded clean accuracy is the fp32 one, computed outside any autocast
    rd = t.run_data
    images, labels = rd.test
    assert res["test_clean_acc"] == accuracy(t.model, images, labels)
    sels = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["grad_error"] < 1 for r in sels if r["kind"] == "selection")


@needs_bf16
def test_bf16_changes_the_numbers_and_fp32_does_not(tmp_path: Path) -> None:
    """amp: auto on the CPU (the default until the accuracy check) trains bit-identically to amp: false;
    amp: true does not."""
    runs = {}
    for amp in ("false", "auto", "true"):
        t = Trainer(_cfg(tmp_path / amp, f"amp={amp}", "selection.method=full", "optim.epochs=1"))
        n = t.labels.numel()
        t.train_epoch(torch.arange(n), torch.ones(n))
        runs[amp] = torch.cat([p.detach().flatten() for p in t.model.parameters()])
    assert torch.equal(runs["false"], runs["auto"]) != CPU_BF16_BY_DEFAULT
    assert not torch.equal(runs["false"], runs["true"])


@needs_bf16
def test_resume_refuses_a_change_of_precision(tmp_path: Path) -> None:
    Trainer(_cfg(tmp_path, "amp=false")).run(stop_after=1)
    with pytest.raises(TrainingError, match="trained in fp32.*--set amp=false"):
        Trainer(_cfg(tmp_path, "amp=true")).run(resume=True)
    if not CPU_BF16_BY_DEFAULT:  # auto is fp32 on the CPU: the same precision, so it resumes
        assert "kind" in Trainer(_cfg(tmp_path, "amp=auto")).run(resume=True)


@needs_bf16
def test_a_checkpoint_without_precision_is_read_as_the_old_rule(tmp_path: Path) -> None:
    """Checkpoints written before precision was recorded: amp: true on the CPU meant fp32."""
    Trainer(_cfg(tmp_path, "amp=true")).run(stop_after=1)
    path = tmp_path / "run" / "last.pt"
    ckpt = load_checkpoint(path)
    del ckpt["precision"]
    save_atomic(ckpt, path)
    with pytest.raises(TrainingError, match="trained in fp32"):  # old rule: amp was ignored on the CPU
        Trainer(_cfg(tmp_path, "amp=true")).run(resume=True)
    assert "kind" in Trainer(_cfg(tmp_path, "amp=false")).run(resume=True)
