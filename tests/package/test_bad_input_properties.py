"""Property-based bad inputs (issue 26), beside the hand-written tables of ``cli/test_bad_input_errors.py``,
``cli/test_input_shape_refusals.py``, ``ground/test_checkpoint_checks.py`` and ``package/test_api_input_errors.py``.

Four properties, each over inputs Hypothesis generates:

1. ``--set`` override sets (real config field paths with random YAML scalars, lists and mappings, or raw
   text): ``load_config`` returns a Config or raises a one-line ``ConfigError`` naming a field given.
2. YAML documents (random keys, duplicates at any depth, integer/null/boolean keys, deep nesting):
   ``Config.from_yaml`` and ``bench.load_spec`` return or raise ``ConfigError`` / ``SpecError`` naming the file.
3. Damaged checkpoints of a real tiny run (keys dropped or replaced, tensors of other shapes or dtypes, NaN,
   lists, strings, a bad ``epoch`` or ``rng``, a bad optimizer state or saved config): ``advcoreset eval`` and
   ``train --resume`` exit 0 or 2 with one ``error:`` line and no traceback (or, for ``--resume`` only, 1 with
   the trainer's one-line "cannot resume" when the saved config differs from the run's ``config.yaml``, as
   ``test_bad_input_errors``' resume-changed-config), and change no file outside the run folder.
4. API arguments to ``select_coreset`` and ``CoresetLoader`` (fractions, batch sizes, method names, label
   tensors): they return or raise a ValueError/TypeError of advcoreset's own or one naming the argument;
   never an IndexError, KeyError, RuntimeError, ZeroDivisionError, ...

Every input once found to be a bug is kept as an ``@example``.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (the default; 25 examples per cheap property, 10 for the checkpoint
one, beside the explicit examples: the file runs in well under a minute on 2 cores) and ``nightly`` (10x more:
250 and 100)::

    HYPOTHESIS_PROFILE=nightly python -m pytest tests/package/test_bad_input_properties.py
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

from advcoreset import bench
from advcoreset.bench.spec import SPEC_KEYS, SpecError
from advcoreset.cli import main
from advcoreset.config import Config, ConfigError
from advcoreset.config_checks import load_config
from advcoreset.coreset import CoresetLoader, select_coreset
from advcoreset.selection import available_selectors

_COMMON = {"deadline": None, "derandomize": True,
           "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=25, **_COMMON)
settings.register_profile("nightly", max_examples=250, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
N = settings().max_examples
"""Examples per cheap property under the chosen profile (25 ci, 250 nightly); the checkpoint one runs 2N/5."""


def _settings(n: int) -> settings:
    return settings(deadline=None, derandomize=True, max_examples=max(1, n),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------------------------- shared strategies
def _paths(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out += _paths(v, prefix + k + ".")
    return out


PATHS = _paths(Config().to_dict())
"""Every dotted config path: leaves (``optim.lr``) and sections (``optim``, ``objective.attack``)."""
FIELD_NAMES = sorted({p.rsplit(".", 1)[-1] for p in PATHS})
WORDS = ["auto", "cpu", "cuda:0", "linf", "l2", "craig", "gradmatch", "full", "rs2", "digits", "pgd", "trades",
         "onecycle", "none", "self", "", " ", "1e400", "-.inf", "nan", "0x10", "1_000", "yes", "~"]

scalars = st.one_of(
    st.integers(-3, 12), st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([2**63, -(2**63) - 1, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, -1e-9]),
    st.text(max_size=12), st.sampled_from(WORDS), st.booleans(), st.none(),
)
yaml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=6)), inner,
                                            max_size=3)),
    max_leaves=6,
)


def _mostly(valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` four times in five, so that most examples get past the type checks to the rules (and the
    selection) behind them."""
    return st.sampled_from([True, True, True, True, False]).flatmap(lambda ok: valid if ok else junk)


def _dump(v: Any) -> str:
    text = yaml.safe_dump(v, default_flow_style=True, width=10**9, allow_unicode=True)
    return text.removesuffix("...\n").strip()


# ------------------------------------------------------------------------ 1. config override sets
def _leaf(path: str) -> Any:
    node: Any = Config().to_dict()
    for part in path.split("."):
        node = node[part]
    return node


def _typed(default: Any) -> st.SearchStrategy[Any]:
    """Values of the default's own type, often in range (so that the rules after the types are reached)."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(-2, 60)
    if isinstance(default, float):
        return st.floats(-0.5, 2.0)
    if isinstance(default, str):
        return st.sampled_from([default, *WORDS])
    if isinstance(default, list):
        return st.lists(st.floats(-0.5, 1.5), max_size=3)
    if isinstance(default, dict):
        return st.dictionaries(st.sampled_from(sorted(default) or ["x"]), scalars, max_size=2)
    return st.one_of(st.none(), st.integers(-2, 60), st.floats(-0.5, 2.0))  # a field whose default is null


def _value_text(path: str) -> st.SearchStrategy[str]:
    junk = st.one_of(yaml_values.map(_dump), st.text(max_size=15))
    return _mostly(_typed(_leaf(path)).map(_dump), junk)


override_sets = st.lists(st.sampled_from(PATHS).flatmap(lambda p: st.tuples(st.just(p), _value_text(p))),
                         min_size=1, max_size=4)


@_settings(N)
@given(pairs=override_sets)
@example(pairs=[("optim.lr", str(10**400))])  # was OverflowError: int too large to convert to float
@example(pairs=[("objective.attack.eps", str(-(10**309)))])
@example(pairs=[("optim.betas", f"[0.5, {10**400}]")])
@example(pairs=[("seed", "9" * 5000)])  # was a ValueError of PyYAML naming no field
@example(pairs=[("selection.method", "rs2")])  # a cross-field rule names the field it involves
def test_override_sets_load_or_name_the_field(pairs: list[tuple[str, str]]) -> None:
    overrides = [f"{path}={value}" for path, value in pairs]
    try:
        cfg = load_config(None, overrides)
    except ConfigError as e:
        event("ConfigError")
        message = str(e)
        names = {p for p, _ in pairs} | {p.rsplit(".", 1)[-1] for p, _ in pairs}
        assert any(n in message for n in names), (overrides, message)
        assert "\n" not in message, message
    else:
        event("loaded")
        assert isinstance(cfg, Config)


# --------------------------------------------------------------------------------- 2. YAML documents
def _key(k: Any) -> str:
    if isinstance(k, bool):
        return "yes" if k else "no"
    if k is None:
        return "~"
    if isinstance(k, int):
        return str(k)
    if k and k.replace("_", "").isalnum() and k.isascii() and k[0].isalpha() and k not in ("yes", "no", "on",
                                                                                             "off", "true", "false",
                                                                                             "null", "y", "n"):
        return k
    return _dump(str(k))


def _flow(node: Any) -> str:
    if isinstance(node, tuple) and node[0] == "map":
        return "{" + ", ".join(f"{_key(k)}: {_flow(v)}" for k, v in node[1]) + "}"
    if isinstance(node, tuple) and node[0] == "list":
        return "[" + ", ".join(_flow(v) for v in node[1]) + "]"
    return _dump(node)


def _block(pairs: list[tuple[Any, Any]], indent: int = 0) -> list[str]:
    pad = " " * indent
    lines = []
    for k, v in pairs:
        if isinstance(v, tuple) and v[0] == "map" and v[1] and v[2]:
            lines.append(f"{pad}{_key(k)}:")
            lines += _block(v[1], indent + 2)
        else:
            lines.append(f"{pad}{_key(k)}: {_flow(v)}")
    return lines


KEY_POOL = [*FIELD_NAMES, *SPEC_KEYS, "data", "model", "objective", "selection", "optim", "eval", "attack", "pat"]
keys = st.one_of(st.sampled_from(KEY_POOL), st.text(min_size=1, max_size=6), st.integers(-3, 3), st.none(),
                 st.booleans())
nodes = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.tuples(st.just("list"), st.lists(inner, max_size=3)),
        # pairs, not a dict: a key may come twice; the flag writes the mapping in block style
        st.tuples(st.just("map"), st.lists(st.tuples(keys, inner), max_size=4), st.booleans()),
    ),
    max_leaves=10,
)


def _m(*pairs: tuple[Any, Any], block: bool = False) -> tuple[str, list[tuple[Any, Any]], bool]:
    return ("map", list(pairs), block)


GOOD_SPEC = [("name", "t"), ("seeds", ("list", [0])), ("methods", ("list", ["full", "random"])),
             ("fractions", ("list", [0.3])),
             ("base", _m(("data", _m(("name", "digits"))), ("optim", _m(("epochs", 2))))),
             ("objectives", _m(("pgd", _m(("objective", _m(("name", "pgd"))), block=True)), block=True))]
GOOD_CONFIG = [("seed", 1), ("optim", _m(("lr", 0.05), ("epochs", 3), block=True)),
               ("objective", _m(("attack", _m(("eps", 0.1), ("steps", 2))), block=True)),
               ("selection", _m(("method", "craig"), ("fraction", 0.3)))]


def _edit(draw: st.DrawFn, pairs: list[tuple[Any, Any]], depth: int = 0) -> list[tuple[Any, Any]]:
    """``pairs`` with one entry replaced, dropped, added or (in a nested mapping) edited likewise."""
    pairs = list(pairs)
    what = draw(st.sampled_from(["value", "drop", "add", "nested", "nested"]))
    i = draw(st.integers(0, max(0, len(pairs) - 1)))
    nested = pairs and isinstance(pairs[i][1], tuple) and pairs[i][1][0] == "map" and depth < 3
    if what == "nested" and nested:
        k, (_, inner, block) = pairs[i]
        pairs[i] = (k, ("map", _edit(draw, inner, depth + 1), block))
    elif what == "drop" and pairs:
        pairs.pop(i)
    elif what == "add" or not pairs:
        pairs.insert(i, (draw(keys), draw(nodes)))
    else:
        pairs[i] = (pairs[i][0], draw(nodes))
    return pairs


@st.composite
def yaml_documents(draw: st.DrawFn) -> str:
    """A random mapping, or a good bench spec or config with a few random edits (which reach the checks that
    follow the YAML shape), sometimes not a mapping at all."""
    kind = draw(st.sampled_from(["random", "random", "spec", "spec", "config", "not-a-mapping"]))
    if kind == "not-a-mapping":
        return _flow(draw(nodes)) + "\n"
    if kind == "random":
        pairs = draw(st.lists(st.tuples(keys, nodes), max_size=5))
    else:
        pairs = GOOD_SPEC if kind == "spec" else GOOD_CONFIG
        for _ in range(draw(st.integers(0, 3))):
            pairs = _edit(draw, pairs)
    depth = draw(st.sampled_from([0, 0, 0, 3, 19, 20, 21, 30]))
    if depth and pairs:  # the first value nested ``depth`` mappings deep
        k, v = pairs[0]
        for i in range(depth):
            v = ("map", [(draw(st.sampled_from(KEY_POOL)), v)], i % 2 == 0)
        pairs[0] = (k, v)
    if pairs and draw(st.booleans()):  # a key given twice, at the top or inside the first mapping
        k, v = pairs[0]
        if isinstance(v, tuple) and v[0] == "map" and v[1]:
            v = ("map", [*v[1], v[1][0]], v[2])
            pairs[0] = (k, v)
        else:
            pairs.append(pairs[0])
    return "\n".join(_block(pairs)) + "\n"


@_settings(N)
@given(text=yaml_documents())
@example(text=f"optim: {{lr: {10**400}}}\n")
@example(text=f"seed: {'9' * 5000}\n")  # was a ValueError of PyYAML naming no file
@example(text="selection: {fractions: 0.3}\n")  # was an error that did not name the file
@example(text='" \\n": {~: null}\n')  # was an error message over two lines (the key's line break)
@example(text="seed: 1\nseed: 2\n")
@example(text="optim:\n  2: 0.1\n")
@example(text="name: t\nseeds: [0]\nmethods: [full]\nbase: {}\nobjectives: {a: {objective: {name: pgd}}}\n")
def test_yaml_documents_load_or_name_the_file(text: str, tmp_path: Path) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = Config.from_yaml(path)
        event("config loaded")
    except ConfigError as e:
        event("ConfigError")
        assert str(path) in str(e) and "\n" not in str(e), (text, str(e))
    else:
        assert isinstance(cfg, Config)
    try:
        spec = bench.load_spec(path)
    except SpecError as e:
        event("SpecError")
        assert str(path) in str(e) and "\n" not in str(e), (text, str(e))
    else:
        event("spec loaded")
        assert isinstance(spec, dict)


# ------------------------------------------------------------------------------ 3. damaged checkpoints
TINY = ["--set", "data.name=digits", "--set", "data.test_subset=32", "--set", "model.width=8",
        "--set", "objective.attack.steps=1", "--set", "optim.epochs=1", "--set", "eval.pgd_steps=1",
        "--set", "progress=none", "--set", "selection.method=full", "--set", "threads=1"]


@pytest.fixture(scope="module")
def ckpt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a tiny finished digits run (``finished``), trained once, and a working folder
    (``cwd``); each example copies the run beside them."""
    root = tmp_path_factory.mktemp("props")
    (root / "cwd").mkdir()
    assert main(["train", "--out", str(root / "finished"), *TINY]) == 0
    return root


def _snapshot(root: Path, skip: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and skip not in p.parents}


junk = st.one_of(
    st.sampled_from(["nan", "inf", "empty", "long", "bool", "double", "half", "scalar", "bigger", "smaller",
                     "flat", "complex"]).map(lambda k: ("tensor", k)),
    st.sampled_from([None, "x", [1.0, 2.0], {"a": 1}, 3, 2.5, True, b"\x00", ()]).map(lambda v: ("value", v)),
)


def _make(j: tuple[str, Any], like: Any) -> Any:
    kind, v = j
    if kind == "value":
        return v
    t = like if isinstance(like, torch.Tensor) else torch.zeros(3)
    f = t.detach().clone().float()
    return {
        "nan": lambda: f.fill_(float("nan")), "inf": lambda: f.fill_(float("inf")),
        "empty": lambda: torch.empty(0, dtype=t.dtype), "long": lambda: t.long(), "bool": lambda: t.bool(),
        "double": lambda: t.double(), "half": lambda: f.half(), "scalar": lambda: torch.tensor(1.0),
        "bigger": lambda: torch.zeros(*[s + 1 for s in t.shape]), "flat": lambda: t.reshape(-1),
        "smaller": lambda: torch.zeros(*[max(0, s - 1) for s in t.shape]),
        "complex": lambda: f.to(torch.complex64),
    }[v]()


TOP_KEYS = ["format_version", "model", "optimizer", "epoch", "rng", "coreset", "best_val", "times", "config",
            "grad_errors", "precision"]
damage_ops = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(TOP_KEYS)),
    st.tuples(st.just("set"), st.sampled_from(TOP_KEYS), junk),
    st.tuples(st.just("drop_model"), st.integers(0, 99)),
    st.tuples(st.just("set_model"), st.integers(0, 99), junk),
    st.tuples(st.just("extra_model"), st.sampled_from(["extra", "head.extra", "stages.9.weight"]), junk),
    st.tuples(st.just("epoch"), st.one_of(st.integers(-(10**20), 10**20), st.sampled_from(
        [-1, 0, 1, 2, 1.5, "1", None, True, float("nan")]))),
    st.tuples(st.just("rng"), st.sampled_from(["torch", "data", "cuda", "numpy"]), st.one_of(junk, st.just("drop"))),
    st.tuples(st.just("optimizer"), st.sampled_from(["lr-nan", "lr-str", "groups-empty", "state-empty",
                                                     "state-shape", "params-extra", "no-groups"])),
    st.tuples(st.just("coreset"), st.sampled_from(["out-of-range", "float-indices", "mismatch", "junk"])),
    st.tuples(st.just("config"), st.sampled_from(["epochs-5", "width-16", "junk", "unknown-key", "eps-nan"])),
)


def _damage(ckpt: dict[str, Any], op: tuple[Any, ...]) -> None:
    kind = op[0]
    model = ckpt.get("model")
    names = sorted(model) if isinstance(model, dict) and model else ["head.bias"]
    if kind == "drop":
        ckpt.pop(op[1], None)
    elif kind == "set":
        ckpt[op[1]] = _make(op[2], ckpt.get(op[1]))
    elif kind in ("drop_model", "set_model", "extra_model"):
        if not isinstance(model, dict):
            return
        name = op[1] if kind == "extra_model" else names[op[1] % len(names)]
        if kind == "drop_model":
            model.pop(name, None)
        else:
            model[name] = _make(op[2], model.get(name))
    elif kind == "epoch":
        ckpt["epoch"] = op[1]
    elif kind == "rng":
        rng = ckpt.get("rng")
        if isinstance(rng, dict):
            if op[2] == "drop":
                rng.pop(op[1], None)
            else:
                rng[op[1]] = _make(op[2], rng.get(op[1]))
    elif kind == "optimizer":
        opt = ckpt.get("optimizer")
        if not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list) or not opt["param_groups"]:
            return
        group, state = opt["param_groups"][0], opt.get("state", {})
        if op[1] == "lr-nan":
            group["lr"] = float("nan")
        elif op[1] == "lr-str":
            group["lr"] = "fast"
        elif op[1] == "groups-empty":
            opt["param_groups"] = []
        elif op[1] == "state-empty":
            opt["state"] = {}
        elif op[1] == "state-shape" and state:
            first = state[sorted(state)[0]]
            for k in list(first):
                if isinstance(first[k], torch.Tensor):
                    first[k] = torch.zeros(7)
        elif op[1] == "params-extra":
            group["params"] = [*group["params"], 999]
        elif op[1] == "no-groups":
            opt.pop("param_groups")
    elif kind == "coreset":
        ckpt["coreset"] = {"out-of-range": {"indices": torch.tensor([0, 10**6]), "weights": torch.ones(2)},
                           "float-indices": {"indices": torch.tensor([0.5]), "weights": torch.ones(1)},
                           "mismatch": {"indices": torch.tensor([0, 1, 2]), "weights": torch.ones(2)},
                           "junk": [1, 2]}[op[1]]
    elif kind == "config":
        cfg = ckpt.get("config")
        if not isinstance(cfg, dict):
            return
        if op[1] == "epochs-5":
            cfg["optim"]["epochs"] = 5
        elif op[1] == "width-16":
            cfg["model"]["width"] = 16
        elif op[1] == "junk":
            ckpt["config"] = "junk"
        elif op[1] == "unknown-key":
            cfg["nonsense"] = 1
        elif op[1] == "eps-nan":
            cfg["objective"]["attack"]["eps"] = float("nan")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out + err


@_settings(max(5, 2 * N // 5))
@given(ops=st.lists(damage_ops, min_size=1, max_size=3))
# each was an internal error (exit 1 with a traceback) before check_resumable / check_optimizer_state
@example(ops=[("set", "format_version", ("tensor", "nan"))])  # RuntimeError: `tensor != 1` ambiguous
@example(ops=[("set", "precision", ("tensor", "bool"))])  # RuntimeError: `tensor != "fp32"` ambiguous
@example(ops=[("set", "best_val", ("value", {"a": 1}))])  # TypeError: float() argument must be ... not 'dict'
@example(ops=[("set", "grad_errors", ("value", 2.5))])  # TypeError: 'float' object is not iterable
@example(ops=[("set", "times", ("value", [1.0, 2.0]))])  # TypeError of dict(): cannot convert ... element #0
@example(ops=[("epoch", 0), ("optimizer", "state-shape")])  # RuntimeError in the first step: shape (7) vs (3)
@example(ops=[("optimizer", "groups-empty")])  # torch's ValueError (exit 2) naming no file
@example(ops=[("epoch", 0), ("optimizer", "lr-str")])  # resumes: the trainer sets each step's rate itself
def test_damaged_checkpoints_exit_0_or_2(ops: list[tuple[Any, ...]], ckpt_root: Path,
                                         capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ckpt_root / "cwd")  # a file written relative to the working folder is caught too
    copy = ckpt_root / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(ckpt_root / "finished", copy)
    try:
        (copy / "results.json").unlink()  # unfinished: --resume restores last.pt
        ckpt = torch.load(copy / "last.pt", weights_only=True)
        for op in ops:
            _damage(ckpt, op)
        torch.save(ckpt, copy / "last.pt")
        before = _snapshot(ckpt_root, copy)
        for argv in (["eval", str(copy), "--progress", "none", "--pgd-steps", "1", "--n", "8"],
                     ["train", "--out", str(copy), "--resume"]):
            code, text = _run(argv, capsys)
            event(f"{argv[0]} exit {code}")
            errors = [ln for ln in text.splitlines() if "error:" in ln]
            assert "Traceback" not in text and "internal error" not in text, (ops, argv[0], text)
            # exit 1 only for the trainer's documented incompatible resume (a TrainingError, one line): the
            # checkpoint's saved config or precision differs from the run's config.yaml
            assert code in (0, 2) or (code == 1 and argv[0] == "train" and len(errors) == 1
                                      and "cannot resume" in errors[0]), (ops, argv[0], text)
            if code:
                assert len(errors) == 1, (ops, text)
            assert _snapshot(ckpt_root, copy) == before, ("a file outside the run folder changed", ops)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


# ------------------------------------------------------------------------------------ 4. API arguments
K = 4
ARGUMENTS = ("fraction", "batch_size", "method", "label", "dataset", "objective", "model")


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, K))


@st.composite
def label_tensors(draw: st.DrawFn) -> torch.Tensor:
    """Mostly class indices 0..K-1 (so that the selection runs), else beyond the classes, negative, float,
    bool or empty; int64 mostly, else other integer dtypes."""
    top = draw(st.sampled_from([K - 1, K - 1, K - 1, 2 * K]))
    low = draw(st.sampled_from([0, 0, 0, 0, -3]))
    values = draw(st.lists(st.integers(low, top), min_size=draw(st.sampled_from([1, 1, 1, 0])), max_size=12))
    dtype = draw(st.sampled_from([torch.int64] * 6 + [torch.int32, torch.uint8, torch.float32, torch.bool]))
    if dtype == torch.uint8:
        values = [v % 256 for v in values]
    t = torch.tensor(values, dtype=torch.int64).to(dtype)
    if dtype == torch.float32 and values and draw(st.booleans()):
        t = t + 0.5
    return t


fractions = _mostly(st.floats(0.01, 1.0), st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, -0.5, 1.0, 1.5, 1e-9, float("nan"), -1, 0, 1, 2, "0.3", None])))
batch_sizes = _mostly(st.integers(1, 16), st.one_of(st.integers(-3, 0), st.sampled_from([10**12, 2.5, True, "8"])))
methods = _mostly(st.sampled_from(available_selectors()),
                  st.one_of(st.sampled_from(["", "kmeans", "CRAIG", "full "]), st.text(max_size=6)))


def _allowed(e: BaseException) -> bool:
    if not isinstance(e, (ValueError, TypeError)):
        return False
    return type(e).__module__.startswith("advcoreset") or any(a in str(e) for a in ARGUMENTS)


@_settings(N)
@given(labels=label_tensors(), fraction=fractions, batch_size=batch_sizes, method=methods,
       call=st.sampled_from(["select", "loader"]), objective=st.sampled_from(["pgd", "standard"]))
@example(labels=torch.arange(8) % K, fraction="0.3", batch_size=4, method="craig", call="loader",
         objective="pgd")  # was TypeError: '<' not supported between instances of 'int' and 'str'
@example(labels=torch.tensor([0, 1, 2, 3, 7, 1, 2, 3]), fraction=0.5, batch_size=4, method="craig",
         call="select", objective="pgd")  # was IndexError: Target 7 is out of bounds
@example(labels=torch.tensor([0, 1, 2, 3, 7, 1, 2, 3]), fraction=0.5, batch_size=4, method="random",
         call="loader", objective="pgd")  # yielded label 7 of a 4-output model without a word
@example(labels=torch.arange(8) % K, fraction=0.5, batch_size=0, method="craig", call="select",
         objective="pgd")  # was torch's DataLoader ValueError, after the model and objective were built
@example(labels=torch.arange(8) % K, fraction=1.0, batch_size="8", method="craig", call="loader",
         objective="pgd")  # was TypeError: '<' not supported between instances of 'str' and 'int'
def test_api_arguments_return_or_raise_a_named_error(labels: torch.Tensor, fraction: Any, batch_size: int,
                                                     method: str, call: str, objective: str) -> None:
    n = labels.shape[0]
    dataset = TensorDataset(torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(n)), labels)
    model = _mlp()
    try:
        if call == "select":
            indices, weights, _ = select_coreset(model, dataset, objective, method=method, fraction=fraction,
                                                 batch_size=batch_size)
            assert indices.shape == weights.shape and indices.dim() == 1
            assert indices.numel() == 0 or 0 <= int(indices.min()) <= int(indices.max()) < n
            assert bool(torch.isfinite(weights).all()) and bool((weights > 0).all())
        else:
            loader = CoresetLoader(dataset, model, objective, method=method, fraction=fraction,
                                   batch_size=batch_size, warm_epochs=0, interval=1)
            for _ in loader:
                pass
        event(f"{call} returned")
        assert not (isinstance(fraction, float) and math.isnan(fraction)), "a NaN fraction was taken"
    except Exception as e:  # noqa: BLE001 - the property is about which exceptions come out
        event(f"{call} {type(e).__name__}")
        assert _allowed(e), f"{type(e).__name__}: {e}"
        assert "\n" not in str(e), str(e)
