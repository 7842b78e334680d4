"""Fuzz table: bad inputs to ``advcoreset train | eval | config | bench`` (issue 11).

Each case runs the CLI in-process on tiny data made in tmp_path and asserts the exit code (2 bad input,
1 runtime failure), one ``error:`` line that names the offending input, no traceback, no advice to turn off
``weights_only``, no code run from a hostile file (a marker file never appears) and no file outside the run
folder changed. Almost all cases fail before any training; the few that need a trained run copy one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_files import (
    corrupt_safetensors,
    gz,
    hostile_batches,
    idx_bytes,
    malicious_torch_file,
    png_header,
    svhn_mat,
    truncated_copy,
    write_cifar,
    write_fashion,
)

from advcoreset.cli import main

TINY = ["--set", "data.name=digits", "--set", "data.test_subset=32", "--set", "model.width=8",
        "--set", "objective.attack.steps=1", "--set", "optim.epochs=1", "--set", "eval.pgd_steps=1",
        "--set", "eval.every=0", "--set", "progress=none", "--set", "threads=1",
        "--set", "selection.method=gradmatch"]
TRAIN = ["train", "--out", "{run}", *TINY]


@dataclass
class Env:
    tmp: Path
    run: Path
    """The run folder (train --out, eval RUN, bench --out): the only place a command may write."""
    data: Path
    marker: Path
    """A file that a hostile input would create if any of its code ran."""
    finished: Path


@dataclass
class Case:
    id: str
    argv: list[str]
    code: int
    names: str
    setup: Callable[[Env], None] | None = None


def _set(*pairs: str) -> list[str]:
    return [x for p in pairs for x in ("--set", p)]


def train(key_value: str, names: str | None = None, code: int = 2) -> Case:
    return Case(f"set-{key_value}", [*TRAIN, "--set", key_value], code, names or key_value.split("=")[0])


# ------------------------------------------------------------------------------------------- set-ups
def copy_run(env: Env) -> None:
    shutil.copytree(env.finished, env.run)


def fashion(damage: Callable[[Path], None] | None = None) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        root = write_fashion(env.data / "fm")
        if damage:
            damage(root)
    return setup


def cifar(name: str) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        folder = write_cifar(env.data)
        (folder / "data_batch_1").write_bytes(hostile_batches(env.marker)[name])
    return setup


def run_with(damage: Callable[[Env], None]) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        copy_run(env)
        damage(env)
    return setup


def write(rel: str, content: bytes | str) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        p = env.data / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    return setup


def other_model_ckpt(env: Env) -> None:
    """last.pt with the model of another width (the saved config untouched): a shape mismatch."""
    from advcoreset.models import create_model

    ckpt = torch.load(env.run / "last.pt", weights_only=True)
    ckpt["model"] = create_model("small_cnn", 1, 10, 8, [0.5], [0.5], width=16).state_dict()
    torch.save(ckpt, env.run / "last.pt")


def unfinished(damage: Callable[[Env], object]) -> Callable[[Env], None]:
    """A copy of the finished run without its results.json (as after a crash), then ``damage``."""
    def setup(env: Env) -> None:
        copy_run(env)
        (env.run / "results.json").unlink()
        damage(env)
    return setup


def spec(text: str) -> Callable[[Env], None]:
    return write("spec.yaml", text)


GOOD_SPEC = """name: t
seeds: [0]
methods: [full]
base: {data: {name: digits, test_subset: 32}, model: {width: 8}, optim: {epochs: 1}}
objectives:
  pgd:
    objective: {name: pgd}
"""


def bad_spec(old: str, new: str) -> Callable[[Env], None]:
    assert old in GOOD_SPEC
    return spec(GOOD_SPEC.replace(old, new))


FM = ["--set", "data.name=fashion-mnist", "--set", "data.root={data}/fm"]
C10 = ["--set", "data.name=cifar10", "--set", "data.root={data}"]
BENCH = ["bench", "{data}/spec.yaml", "--out", "{run}"]
EVAL = ["eval", "{run}"]
RESUME = ["train", "--out", "{run}", "--resume"]
PAT = ["--set", "objective.name=pat", "--set", "objective.pat.lpips={data}/alex.pt"]

CASES: list[Case] = [
    # ---- config values: every field checked up front, naming the field
    *[train(kv) for kv in [
        "objective.attack.eps=-0.5", "objective.attack.eps=2", "objective.attack.eps=.nan",
        "objective.attack.eps=.inf", "objective.attack.alpha=0", "objective.attack.steps=0",
        "objective.attack.restarts=0", "objective.attack.norm=l3", "objective.attack.random_start=maybe",
        "objective.name=madry", "objective.beta=-1", "objective.pat.bound=0", "objective.pat.steps=0",
        "objective.pat.lambda_init=0", "objective.pat.lambda_growth=0.5", "model.name=vgg", "model.width=0",
        "selection.method=kmeans", "selection.fraction=0", "selection.fraction=1.5", "selection.warm_epochs=-1",
        "selection.interval=0", "selection.grad_features=all", "selection.lam=-1",
        "selection.selection_batch_size=0", "selection.attack_steps=-1", "selection.attack_alpha=0",
        "selection.tol=-0.1", "selection.tol=1.5", "selection.max_class_size=0", "selection.solver_threads=0",
        "selection.lam_relative=maybe", "optim.epochs=0",
        "optim.batch_size=0", "optim.lr=0", "optim.lr=-0.1", "optim.momentum=1.5", "optim.weight_decay=-1",
        "optim.schedule=linear", "optim.milestones=[0.5,1.5]", "optim.milestones=0.5", "optim.gamma=0",
        "optim.pct_start=1", "optim.grad_clip=-1", "optim.grad_clip=0", "optim.weight_norm=median",
        "eval.pgd_steps=0", "eval.pgd_alpha=-0.01", "eval.pgd_restarts=0", "eval.every=-1",
        "eval.val_pgd_steps=0", "eval.autoattack_n=0", "eval.autoattack_targets=0",
        "eval.autoattack_version=plus", "eval.batch_size=0", "eval.union_linf_eps=-1", "eval.union_l2_eps=0",
        "data.name=imagenet", "data.augment=rotate", "data.val_size=-1", "data.train_subset=0",
        "data.test_subset=0", "data.crop_padding=-1", "data.image_size=0", "data.root=5", "seed=-1", "seed=1.5",
        "device=cuda:x", "device=cudafoo", "device=tpu", "device=cuda:99", "threads=-1", "threads=0",
        "progress=verbose", "tensorboard=3", "amp=2", "optim.epochs=3.5", "eval.pgd_alpha=abc",
    ]],
    Case("set-nesterov-no-momentum", [*TRAIN, *_set("optim.nesterov=true", "optim.momentum=0")], 2,
         "optim.nesterov"),
    Case("set-autoattack-eps0", [*TRAIN, *_set("eval.autoattack=true", "objective.attack.eps=0")], 2,
         "eval.autoattack"),
    Case("autoattack-l2-square-8px", [*TRAIN, *_set("eval.autoattack=true", "objective.attack.norm=l2",
                                                    "objective.attack.eps=0.5")], 2, "eval.autoattack"),
    Case("set-unknown-field", [*TRAIN, *_set("objective.attack.epsilon=0.1")], 2, "objective.attack.epsilon"),
    Case("set-unknown-section", [*TRAIN, *_set("foo.bar=1")], 2, "foo.bar"),
    Case("set-no-equals", [*TRAIN, "--set", "objective.attack.eps"], 2, "objective.attack.eps"),
    Case("set-yaml-error", [*TRAIN, *_set("data.name=[1")], 2, "data.name"),
    Case("set-yaml-python-tag", [*TRAIN, *_set("seed=!!python/object/apply:os.system ['touch {marker}']")], 2,
         "seed"),
    Case("set-section-scalar", [*TRAIN, *_set("objective=3")], 2, "objective"),
    Case("config-cmd-bad-value", ["config", *_set("selection.fraction=2")], 2, "selection.fraction"),
    # ---- config files
    Case("config-missing", [*TRAIN, "--config", "{data}/nope.yaml"], 2, "nope.yaml"),
    Case("config-folder", [*TRAIN, "--config", "{data}"], 2, "{data}"),
    Case("config-bad-yaml", [*TRAIN, "--config", "{data}/c.yaml"], 2, "c.yaml", write("c.yaml", "a: [1\n")),
    Case("config-list", [*TRAIN, "--config", "{data}/c.yaml"], 2, "c.yaml", write("c.yaml", "- 1\n- 2\n")),
    Case("config-python-tag", [*TRAIN, "--config", "{data}/c.yaml"], 2, "c.yaml",
         lambda e: write("c.yaml", f"seed: !!python/object/apply:os.system ['touch {e.marker}']\n")(e)),
    Case("config-unknown-key", [*TRAIN, "--config", "{data}/c.yaml"], 2, "fractions",
         write("c.yaml", "selection: {fractions: 0.3}\n")),
    Case("config-binary", [*TRAIN, "--config", "{data}/c.yaml"], 2, "c.yaml", write("c.yaml", b"\xff\xfe\x00bad")),
    Case("config-section-scalar", [*TRAIN, "--config", "{data}/c.yaml"], 2, "selection",
         write("c.yaml", "selection: 3\n")),
    # ---- data files (read before any training; the message names the file)
    Case("data-root-missing", [*TRAIN, *_set("data.name=fashion-mnist", "data.root={data}/nowhere")], 2, "nowhere"),
    Case("idx-truncated", [*TRAIN, *FM], 2, "train-images-idx3-ubyte", fashion(
        lambda r: truncated_copy(r / "train-images-idx3-ubyte", r / "train-images-idx3-ubyte", 0.7))),
    Case("idx-bad-magic", [*TRAIN, *FM], 2, "train-labels-idx1-ubyte", fashion(
        lambda r: (r / "train-labels-idx1-ubyte").write_bytes(b"\x01\x02\x08\x01" + b"\0" * 44))),
    Case("idx-n-zero", [*TRAIN, *FM], 2, "train-images-idx3-ubyte", fashion(
        lambda r: (r / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8))))),
    Case("idx-labels-zero", [*TRAIN, *FM], 2, "t10k-labels-idx1-ubyte", fashion(
        lambda r: (r / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros((0,), np.uint8))))),
    Case("idx-label-range", [*TRAIN, *FM], 2, "train-labels-idx1-ubyte", fashion(
        lambda r: (r / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(40, 12, np.uint8))))),
    Case("idx-count-mismatch", [*TRAIN, *FM], 2, "train-labels-idx1-ubyte", fashion(
        lambda r: (r / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(39, np.uint8))))),
    Case("idx-type-code", [*TRAIN, *FM], 2, "train-images-idx3-ubyte", fashion(
        lambda r: (r / "train-images-idx3-ubyte").write_bytes(b"\0\0\x42\x03" + b"\0" * 12))),
    Case("idx-trailing", [*TRAIN, *FM], 2, "t10k-images-idx3-ubyte", fashion(
        lambda r: (r / "t10k-images-idx3-ubyte").write_bytes((r / "t10k-images-idx3-ubyte").read_bytes() + b"x"))),
    Case("idx-bad-gzip", [*TRAIN, *FM], 2, "train-images-idx3-ubyte", fashion(
        lambda r: (r / "train-images-idx3-ubyte").write_bytes(b"\x1f\x8b" + b"\0" * 30))),
    Case("idx-gz-truncated", [*TRAIN, *FM], 2, "train-images-idx3-ubyte", fashion(
        lambda r: truncated_copy(gz(r / "train-images-idx3-ubyte"), r / "train-images-idx3-ubyte", 0.5))),
    Case("idx-1d-images", [*TRAIN, *FM], 2, "train-images-idx3-ubyte", fashion(
        lambda r: (r / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros(40, np.uint8))))),
    Case("idx-missing-file", [*TRAIN, *FM], 2, "t10k-labels-idx1-ubyte", fashion(
        lambda r: (r / "t10k-labels-idx1-ubyte").unlink())),
    Case("cifar-missing", [*TRAIN, *C10], 2, "data_batch_1"),
    *[Case(f"cifar-{name}", [*TRAIN, *C10], 2, "data_batch_1", cifar(name)) for name in [
        "system", "reconstruct_big", "reconstruct_heap", "ndarray_call", "bytearray_size", "short_raw",
        "big_state", "object_array", "bytearray8_huge", "binbytes8_huge", "truncated", "not_a_dict",
        "labels_range", "labels_count", "labels_strings", "data_shape", "data_float", "empty", "eval_call",
        "gzip_garbage",
        # issue 26: codecs other than latin-1 (an unknown one was a LookupError traceback), and small files that
        # made the unpickler allocate far more than they hold (a memo index, copies of one object, a shared DAG)
        "codec_unknown", "codec_bytes_call", "codec_bytearray_call", "codec_py2_name", "alloc_memo_binput",
        "alloc_memo_late", "alloc_list_copies", "alloc_shared_array_bytes", "alloc_shared_dag"]],
    Case("cifar-meta-classes", [*TRAIN, *C10], 2, "batches.meta", lambda e: write_cifar(e.data, classes=7)),
    Case("imagefolder-empty", [*TRAIN, *_set("data.name=imagefolder", "data.root={data}/imgs")], 2, "imgs",
         lambda e: (e.data / "imgs" / "train").mkdir(parents=True)),
    Case("imagefolder-bad-image", [*TRAIN, *_set("data.name=imagefolder", "data.root={data}/imgs")], 2, "a.png",
         write("imgs/train/cat/a.png", b"not a png")),
    Case("svhn-corrupt", [*TRAIN, *_set("data.name=svhn", "data.root={data}")], 2, "train_32x32.mat",
         write("train_32x32.mat", b"MATLAB garbage")),
    # issue 26: an empty SVHN file, one declaring more than it holds, a PNG header of 20000 x 20000 pixels,
    # IDX sizes whose product wraps around in int64
    Case("svhn-no-images", [*TRAIN, *_set("data.name=svhn", "data.root={data}")], 2, "train_32x32.mat",
         lambda e: svhn_mat(e.data / "train_32x32.mat", 0) and None),
    Case("svhn-declares-more", [*TRAIN, *_set("data.name=svhn", "data.root={data}")], 2, "train_32x32.mat",
         lambda e: svhn_mat(e.data / "train_32x32.mat", 4, declare=40_000) and None),
    Case("imagefolder-huge-header", [*TRAIN, *_set("data.name=imagefolder", "data.root={data}/imgs")], 2, "a.png",
         write("imgs/train/cat/a.png", png_header(20000, 20000))),
    Case("idx-shape-overflow", [*TRAIN, *FM], 2, "train-images-idx3-ubyte", fashion(
        lambda r: (r / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x04" + struct.pack(">4I", *[2**16] * 4)))),
    Case("batchwise-too-large", [*TRAIN, *_set("selection.method=craig", "selection.batchwise=true",
                                               "selection.selection_batch_size=512")], 2,
         "selection.selection_batch_size"),
    # ---- LPIPS weights for PAT (read with weights_only / safetensors, named)
    Case("lpips-missing", [*TRAIN, *PAT], 2, "alex.pt"),
    Case("lpips-malicious", [*TRAIN, *PAT], 2, "alex.pt",
         lambda e: malicious_torch_file(e.data / "alex.pt", e.marker) and None),
    Case("lpips-truncated", [*TRAIN, *PAT], 2, "alex.pt", write("alex.pt", b"PK\x03\x04 truncated zip")),
    Case("lpips-wrong-keys", [*TRAIN, *PAT], 2, "alex.pt",
         lambda e: torch.save({"x": torch.zeros(2)}, e.data / "alex.pt")),
    Case("lpips-safetensors-corrupt", [*TRAIN, *_set("objective.name=pat", "objective.pat.lpips={data}/a.safetensors")],
         2, "a.safetensors", lambda e: corrupt_safetensors(e.data / "a.safetensors") and None),
    # ---- run folders and --resume
    Case("resume-nothing", [*TRAIN, "--resume"], 2, "--resume"),
    Case("run-exists", TRAIN, 2, "already holds a run", copy_run),
    Case("out-is-file", TRAIN, 2, "{run}", lambda e: e.run.write_text("x")),
    Case("out-under-file", ["train", "--out", "{run}/sub", *TINY], 2, "{run}/sub", lambda e: e.run.write_text("x")),
    *[Case(f"resume-{name}", RESUME, 2, names, unfinished(damage)) for name, names, damage in [
        ("truncated-ckpt", "last.pt", lambda e: truncated_copy(e.run / "last.pt", e.run / "last.pt", 0.5)),
        ("empty-ckpt", "last.pt", lambda e: (e.run / "last.pt").write_bytes(b"")),
        ("foreign-ckpt", "last.pt", lambda e: torch.save({"w": torch.zeros(3)}, e.run / "last.pt")),
        ("malicious-ckpt", "last.pt", lambda e: malicious_torch_file(e.run / "last.pt", e.marker)),
        ("no-optimizer", "last.pt", lambda e: torch.save({"model": {}}, e.run / "last.pt")),
        ("other-model", "last.pt", other_model_ckpt),
        ("metrics-corrupt", "metrics.jsonl", lambda e: (e.run / "metrics.jsonl").write_text(
            "not json\n" + (e.run / "metrics.jsonl").read_text())),
        ("config-corrupt", "config.yaml", lambda e: (e.run / "config.yaml").write_text("seed: [\n")),
    ]],
    Case("resume-changed-config", [*RESUME, *_set("optim.epochs=3")], 1, "cannot resume", unfinished(lambda e: 0)),
    # ---- eval
    Case("eval-no-run", ["eval", "{data}/nope"], 2, "nope"),
    Case("eval-not-a-run", ["eval", "{data}"], 2, "config.yaml"),
    Case("eval-missing-ckpt", [*EVAL, "--checkpoint", "best.pt"], 2, "best.pt", copy_run),
    Case("eval-pgd-steps-0", [*EVAL, "--pgd-steps", "0"], 2, "--pgd-steps", copy_run),
    Case("eval-restarts-0", [*EVAL, "--restarts", "0"], 2, "--restarts", copy_run),
    Case("eval-n-negative", [*EVAL, "--n", "-5"], 2, "--n", copy_run),
    Case("eval-n-zero", [*EVAL, "--n", "0"], 2, "--n", copy_run),
    Case("eval-n-text", [*EVAL, "--n", "abc"], 2, "--n", copy_run),
    Case("eval-aa-n-zero", [*EVAL, "--autoattack", "--aa-n", "0"], 2, "--aa-n", copy_run),
    Case("eval-aa-n-without-autoattack", [*EVAL, "--aa-n", "100"], 2, "add --autoattack", copy_run),
    Case("eval-aa-version", [*EVAL, "--aa-version", "plus"], 2, "--aa-version", copy_run),
    Case("eval-device-foo", [*EVAL, "--device", "cudafoo"], 2, "cudafoo", copy_run),
    Case("eval-device-99", [*EVAL, "--device", "cuda:99"], 2, "cuda:99", copy_run),
    Case("eval-output-folder", [*EVAL, "--output", "{run}"], 2, "{run}", copy_run),
    Case("eval-output-under-file", [*EVAL, "--output", "{run}/last.pt/x.json"], 2, "last.pt", copy_run),
    Case("eval-truncated-ckpt", EVAL, 2, "last.pt",
         run_with(lambda e: truncated_copy(e.run / "last.pt", e.run / "last.pt", 0.3) and None)),
    Case("eval-malicious-ckpt", EVAL, 2, "last.pt",
         run_with(lambda e: malicious_torch_file(e.run / "last.pt", e.marker) and None)),
    Case("eval-foreign-ckpt", EVAL, 2, "last.pt",
         run_with(lambda e: torch.save({"model": {"w": torch.zeros(2)}}, e.run / "last.pt"))),
    Case("eval-other-model", EVAL, 2, "last.pt", run_with(other_model_ckpt)),
    Case("eval-config-tampered", EVAL, 2, "eval.pgd_alpha", run_with(
        lambda e: (e.run / "config.yaml").write_text((e.run / "config.yaml").read_text().replace(
            "pgd_alpha: null", "pgd_alpha: -0.5")) and None)),
    Case("eval-config-bad-yaml", EVAL, 2, "config.yaml",
         run_with(lambda e: (e.run / "config.yaml").write_text("eval: [\n") and None)),
    # ---- bench specs and flags
    Case("bench-missing", BENCH, 2, "spec.yaml"),
    Case("bench-bad-yaml", BENCH, 2, "spec.yaml", spec("name: [\n")),
    Case("bench-not-mapping", BENCH, 2, "spec.yaml", spec("- 1\n")),
    Case("bench-python-tag", BENCH, 2, "spec.yaml",
         lambda e: spec(f"name: !!python/object/apply:os.system ['touch {e.marker}']\n")(e)),
    Case("bench-unknown-key", BENCH, 2, "fraction", bad_spec("methods: [full]", "methods: [full]\nfraction: [0.3]")),
    Case("bench-seeds-empty", BENCH, 2, "seeds", bad_spec("seeds: [0]", "seeds: []")),
    Case("bench-seeds-repeat", BENCH, 2, "seeds", bad_spec("seeds: [0]", "seeds: [0, 0]")),
    Case("bench-seeds-text", BENCH, 2, "seeds", bad_spec("seeds: [0]", "seeds: [a]")),
    Case("bench-method-unknown", BENCH, 2, "kmeans", bad_spec("methods: [full]", "methods: [full, kmeans]")),
    Case("bench-methods-empty", BENCH, 2, "methods", bad_spec("methods: [full]", "methods: []")),
    Case("bench-name-path", BENCH, 2, "name", bad_spec("name: t", "name: ../../x")),
    Case("bench-name-slash", BENCH, 2, "name", bad_spec("name: t", "name: a/b")),
    Case("bench-objectives-empty", BENCH, 2, "objectives",
         spec(GOOD_SPEC.split("objectives:")[0] + "objectives: {}\n")),
    Case("bench-objective-path", BENCH, 2, "objectives", bad_spec("  pgd:", "  ../up:")),
    Case("bench-objective-scalar", BENCH, 2, "objectives.pgd",
         spec(GOOD_SPEC.split("  pgd:")[0] + "  pgd: 3\n")),
    Case("bench-fractions-scalar", BENCH, 2, "fractions",
         bad_spec("methods: [full]", "methods: [full]\nfractions: 0.3")),
    Case("bench-fraction-range", BENCH, 2, "selection.fraction",
         bad_spec("methods: [full]", "methods: [full, random]\nfractions: [2]")),
    Case("bench-base-bad", BENCH, 2, "objective.attack.eps", bad_spec("objective: {name: pgd}",
                                                                       "objective: {name: pgd, attack: {eps: -1}}")),
    Case("bench-base-scalar", BENCH, 2, "base", spec(GOOD_SPEC.replace(GOOD_SPEC.splitlines()[3], "base: 3"))),
    Case("bench-no-base", BENCH, 2, "base", spec(GOOD_SPEC.replace(GOOD_SPEC.splitlines()[3] + "\n", ""))),
    Case("bench-jobs-spec", BENCH, 2, "jobs", bad_spec("seeds: [0]", "seeds: [0]\njobs: 0")),
    Case("bench-reference", BENCH, 2, "reference", bad_spec("seeds: [0]", "seeds: [0]\nreference: fast")),
    Case("bench-targets", BENCH, 2, "targets", bad_spec("seeds: [0]", "seeds: [0]\ntargets: {objective: x}")),
    Case("bench-only-typo", [*BENCH, "--only", "pdg"], 2, "pdg", spec(GOOD_SPEC)),
    Case("bench-only-empty", [*BENCH, "--only", ","], 2, "--only", spec(GOOD_SPEC)),
    Case("bench-jobs-0", [*BENCH, "--jobs", "0"], 2, "--jobs", spec(GOOD_SPEC)),
    Case("bench-jobs-negative", [*BENCH, "--jobs", "-1"], 2, "--jobs", spec(GOOD_SPEC)),
    Case("bench-out-file", BENCH, 2, "{run}", lambda e: [spec(GOOD_SPEC)(e), e.run.write_text("x")] and None),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


def snapshot(root: Path, skip: Path) -> dict[str, str]:
    """Path -> content hash of every file under ``root`` outside ``skip``."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and skip not in p.parents and p != skip}


def run_case(case: Case, env: Env, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    fmt = {k: str(v) for k, v in vars(env).items()}
    argv = [a.format(**fmt) for a in case.argv]
    if case.setup:
        case.setup(env)
    before = snapshot(env.tmp, env.run)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = int(e.code)
    out, err = capsys.readouterr()
    assert snapshot(env.tmp, env.run) == before, "a file outside the run folder changed"
    return code, out + err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    env = Env(tmp_path, tmp_path / "run", tmp_path / "data", tmp_path / "pwned", finished_run)
    env.data.mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # anything written relative to the working folder is caught too
    code, text = run_case(case, env, capsys)
    errors = [ln for ln in text.splitlines() if "error:" in ln]
    assert code == case.code, text
    assert "Traceback" not in text and "weights_only" not in text, text
    assert len(errors) == 1, text
    assert case.names.format(**{k: str(v) for k, v in vars(env).items()}) in errors[0], text
    assert not env.marker.exists(), "code from a hostile input ran"


def test_the_table_is_large_and_ids_unique() -> None:
    assert len(CASES) >= 120 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes through read-only permissions")
def test_read_only_folders(tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only output folder is an error before any work, for train and for eval (whose result would
    otherwise be lost after the evaluation ran)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    run.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert main(["train", "--out", str(ro / "x"), *TINY]) == 2
        assert str(ro / "x") in capsys.readouterr().err
        assert main(["eval", str(run), "--n", "8"]) == 2
        err = capsys.readouterr().err
        assert "not writable" in err and "--output" in err
    finally:
        ro.chmod(stat.S_IRWXU)
        run.chmod(stat.S_IRWXU)
    assert json.loads((run / "results.json").read_text())["kind"] == "final"
