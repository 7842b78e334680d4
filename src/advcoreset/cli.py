"""Command line: ``advcoreset train | eval | export | config | bench``.

    advcoreset train                                  # PGD-AT on Fashion-MNIST, CPU defaults
    advcoreset train --config configs/fmnist_pgd_craig.yaml --set selection.fraction=0.5
    advcoreset train --out runs/x --resume            # continue a killed run
    advcoreset eval runs/x --autoattack               # clean, PGD-k, AutoAttack -> runs/x/eval.json
    advcoreset eval --model my_nets:build --weights w.safetensors --data cifar10 --norm linf --eps 0.0314
    advcoreset export runs/x --out models/x           # model.safetensors + model.json (+ model_arch.py)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from advcoreset import __version__, bench
from advcoreset.config import ConfigError, PATConfig
from advcoreset.config_checks import load_config


def _train(args: argparse.Namespace) -> int:
    from advcoreset.checkpoint import check_resumable, load_checkpoint
    from advcoreset.training import train
    from advcoreset.training.preflight import check_device
    from advcoreset.training.run_folder import check_start, check_writable, finished_results, run_lock
    from advcoreset.world import launch_info

    overrides = list(args.set or [])
    if args.resume and args.config is None and args.out:
        saved = Path(args.out) / "config.yaml"
        if saved.exists():
            args.config = str(saved)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    cfg = load_config(args.config, overrides)
    check_device(cfg.device)
    out = Path(cfg.out_dir)
    if args.resume and finished_results(out, cfg.optim.epochs) is not None:
        print(f"advcoreset: {out} holds a finished run ({out / 'results.json'}); nothing to train. "
              f"`advcoreset eval {out}` evaluates it again.", flush=True)
        return 0
    check_writable(out)
    rank = launch_info(os.environ)[0]  # under torchrun: rank 0 writes, so it alone holds the folder's lock
    with run_lock(out) if rank == 0 else nullcontext():
        check_start(out, args.resume)
        if args.resume:
            check_resumable(load_checkpoint(out / "last.pt"), out / "last.pt")
        if rank == 0:
            print(_banner(cfg), flush=True)
        train(cfg, resume=args.resume)
    return 0


def _banner(cfg: Any) -> str:
    s = cfg.selection
    never = s.method != "full" and s.warm_epochs >= cfg.optim.epochs
    return (f"advcoreset: training {cfg.objective.name} ({cfg.objective.attack.norm}, eps {cfg.objective.attack.eps}) "
            f"on {cfg.data.name} with {cfg.model.name}, selection {s.method}"
            + (f" @ {s.fraction}" if s.method != "full"
               else " (all data every epoch; a coreset: --set selection.method=gradmatch)")
            + (f" (never reached: the warm start spans all {cfg.optim.epochs} epochs, so every epoch trains on all "
               "data)" if never else "") + f" -> {cfg.out_dir}")


def _eval(args: argparse.Namespace) -> int:
    from advcoreset.progress import make_progress
    from advcoreset.training.preflight import check_device
    from advcoreset.training.run_folder import check_output_file, write_json_atomic

    for flag, value in (("--n", args.n), ("--pgd-steps", args.pgd_steps), ("--restarts", args.restarts),
                        ("--aa-n", args.aa_n)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.aa_n is not None and not args.autoattack:
        raise ConfigError(f"--aa-n {args.aa_n} sets AutoAttack's images: add --autoattack (or drop --aa-n)")
    if args.device is not None:
        check_device(args.device, "--device")
    progress = make_progress(args.progress)
    if args.model is not None:
        _check_outside_args(args)
        out = check_output_file(Path(args.output) if args.output else Path(args.weights).parent / "eval.json",
                                "eval output file", inputs=(args.weights,))
        res = _eval_outside(args, progress)
    else:
        from advcoreset.evaluation.run import evaluate_run

        outside_only = [f for f, v in (("--weights", args.weights), ("--data", args.data), ("--norm", args.norm),
                                       ("--eps", args.eps), ("--data-root", args.data_root)) if v is not None]
        if args.run is None:
            raise ConfigError("eval needs a run folder (advcoreset eval RUN) or an outside model "
                              "(--model package.module:factory --weights FILE --data NAME --norm N --eps E)")
        if outside_only:
            raise ConfigError(f"{', '.join(outside_only)} apply to --model only: a run is evaluated on its own "
                              "data and threat model")
        run = Path(args.run)
        if not (run / "config.yaml").is_file():
            raise ConfigError(f"{run} is not an advcoreset run folder (no {run / 'config.yaml'}); give the --out "
                              "folder of a training run")
        out = check_output_file(Path(args.output) if args.output else run / "eval.json", "eval output file",
                                run=run)
        res = evaluate_run(args.run, checkpoint=args.checkpoint, n=args.n, pgd_steps=args.pgd_steps,
                           restarts=args.restarts, autoattack=args.autoattack, aa_version=args.aa_version,
                           aa_n=args.aa_n, perceptual=args.perceptual, device=args.device, progress=progress)
    write_json_atomic(out, res)
    for k, v in res.items():
        if isinstance(v, float):
            print(f"{k}: {v:.4f}")
    print(f"wrote {out}")
    return 0


def _check_outside_args(args: argparse.Namespace) -> None:
    missing = [f for f, v in (("--weights", args.weights), ("--data", args.data), ("--norm", args.norm),
                              ("--eps", args.eps)) if v is None]
    if missing:
        raise ConfigError(f"eval --model also needs {', '.join(missing)}")
    if args.run is not None:
        raise ConfigError(f"give either a run folder ({args.run}) or --model, not both")
    eps = args.eps
    if not math.isfinite(eps) or eps <= 0 or (args.norm == "linf" and eps > 1):
        limit = "in (0, 1] (pixels are in [0, 1]; 8/255 = 0.0314)" if args.norm == "linf" else "finite and > 0"
        raise ConfigError(f"--eps {eps} for --norm {args.norm}: the radius must be {limit}")


def _eval_outside(args: argparse.Namespace, progress: Any) -> dict[str, Any]:
    from advcoreset.evaluation.outside import evaluate_outside

    kwargs: dict[str, Any] = {} if args.n is None else {"n": args.n}
    if args.aa_n is not None:
        kwargs["aa_n"] = args.aa_n
    return evaluate_outside(args.model, args.weights, data=args.data, data_root=args.data_root, norm=args.norm,
                            eps=args.eps, pgd_steps=args.pgd_steps, restarts=args.restarts,
                            autoattack=args.autoattack, aa_version=args.aa_version, perceptual=args.perceptual,
                            perceptual_bound=args.perceptual_bound, lpips=args.lpips, device=args.device,
                            progress=progress, **kwargs)


def _export(args: argparse.Namespace) -> int:
    from advcoreset.evaluation.run import export_run

    out = export_run(args.run, args.out, checkpoint=args.checkpoint)
    print(f"wrote {out}/model.safetensors and model.json (load: advcoreset.load_model({str(out)!r}), "
          "or without advcoreset: see docs/export.md)")
    return 0


def _config(args: argparse.Namespace) -> int:
    import yaml

    cfg = load_config(args.config, args.set or [])
    sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return 0


def _bench(args: argparse.Namespace) -> int:
    return bench.run(args)


def _add_train(sub: Any) -> None:
    """``advcoreset train``."""
    t = sub.add_parser("train", help="train a (robust) classifier; with no arguments: "
                       "7 epochs of PGD-AT on all of Fashion-MNIST")
    t.add_argument("--config", "-c", help="YAML config (see configs/); defaults otherwise")
    t.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set selection.method=craig (repeatable)")
    t.add_argument("--out", help="run folder (overrides out_dir)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.set_defaults(fn=_train)


def _add_eval(sub: Any) -> None:
    """``advcoreset eval``: a run folder, or an outside model with its data and threat model."""
    e = sub.add_parser("eval", help="evaluate a run's checkpoint, or an outside model (--model): clean, PGD-k, "
                       "AutoAttack, perceptual")
    e.add_argument("run", nargs="?", help="run folder (holds config.yaml and last.pt); omit with --model")
    e.add_argument("--checkpoint", default="last.pt", help="last.pt or best.pt (default last.pt)")
    e.add_argument("--n", type=int, default=None,
                   help="test images (default: the run's data.test_subset; 2000 with --model)")
    e.add_argument("--pgd-steps", type=int, default=None, help="PGD iterations (default: the run's eval.pgd_steps, "
                   "20 with --model)")
    e.add_argument("--restarts", type=int, default=None, help="PGD random restarts; an image counts as robust "
                   "only if no restart fools it (default: the run's eval.pgd_restarts, 1 with --model)")
    e.add_argument("--autoattack", action="store_true", help="run AutoAttack too")
    e.add_argument("--aa-version", default="standard", choices=["standard", "fast"],
                   help="standard: APGD-CE, APGD-T, FAB-T, Square at RobustBench budgets; fast: APGD-CE + APGD-T "
                   "only (a smoke test, labelled as such)")
    e.add_argument("--aa-n", type=int, default=None, help="AutoAttack on the first N of the test images (default: "
                   "the run's eval.autoattack_n, or all --n images; 2000 with --model)")
    e.add_argument("--perceptual", action="store_true", help="also PPGD and LPA at the PAT bound")
    e.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    e.add_argument("--output", "-o", help="JSON file to write (default RUN/eval.json, or eval.json beside "
                   "--weights)")
    e.add_argument("--progress", default="auto", choices=["auto", "bar", "line", "none"],
                   help="progress of each attack: a bar on a terminal (auto), a line every ~10 s, or none")
    o = e.add_argument_group("outside models", "evaluate any classifier that maps (B, C, H, W) pixels in [0, 1] "
                             "to logits")
    o.add_argument("--model", metavar="MODULE:FACTORY",
                   help="package.module:factory; factory() returns the untrained nn.Module")
    o.add_argument("--weights", help="its state dict: .safetensors, or .pt read with torch.load(weights_only=True)")
    o.add_argument("--data", help="test set: fashion-mnist, mnist, cifar10, cifar100, svhn, digits, imagefolder")
    o.add_argument("--data-root", help="folder with the dataset's files (default: the dataset's usual place)")
    o.add_argument("--norm", choices=["linf", "l2"], help="threat model norm")
    o.add_argument("--eps", type=float, help="threat model radius in [0, 1] pixel units (e.g. 0.1, 8/255=0.0314)")
    o.add_argument("--perceptual-bound", type=float, default=PATConfig.bound,
                   help=f"LPIPS bound of --perceptual (default {PATConfig.bound})")
    o.add_argument("--lpips", default="self", help="--perceptual distance: self (the model's own feature_maps) or "
                   "a path to local AlexNet weights")

    e.set_defaults(fn=_eval)


def _add_export(sub: Any) -> None:
    """``advcoreset export``."""
    x = sub.add_parser("export", help="write a run's model as model.safetensors + model.json (loadable "
                       "without advcoreset)")
    x.add_argument("run", help="run folder (holds config.yaml and last.pt)")
    x.add_argument("--checkpoint", default="last", choices=["last", "best"],
                   help="last (end of training, default) or best (best validation robust accuracy)")
    x.add_argument("--out", required=True, help="folder to write model.safetensors, model.json, model_arch.py")
    x.set_defaults(fn=_export)


def _add_config(sub: Any) -> None:
    """``advcoreset config``."""
    c = sub.add_parser("config", help="print the resolved config (defaults + file + overrides)")
    c.add_argument("--config", "-c", help="YAML config (see configs/); defaults otherwise")
    c.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set selection.method=craig (repeatable)")
    c.set_defaults(fn=_config)


def _add_bench(sub: Any) -> None:
    """``advcoreset bench``: the harness defines its own flags."""
    b = sub.add_parser("bench", help="the paper's table: Full/Random/CRAIG/GradMatch across objectives",
                       description=bench.USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(b)
    b.set_defaults(fn=_bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="advcoreset", description="Adversarial coreset selection for efficient "
                                "robust training.")
    p.add_argument("--version", action="version", version=f"advcoreset {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True)

    for add in (_add_train, _add_eval, _add_export, _add_config, _add_bench):
        add(sub)
    p.add_argument("--debug", action="store_true", help="show the traceback of any error (or ADVCORESET_DEBUG=1)")
    for cmd in sub.choices.values():  # `advcoreset train ... --debug` as well as `advcoreset --debug train`
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of any error")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure is one ``error: ...`` line (see ``errors.exit_code_and_message``):
    exit 2 for bad input, 1 for a runtime failure, 130 when interrupted. A traceback is printed only for an
    internal error (a bug), or with ``--debug`` / ``ADVCORESET_DEBUG=1``."""
    from advcoreset.errors import DEBUG_ENV, exit_code_and_message
    from advcoreset.training.run_folder import die_with_parent

    args = build_parser().parse_args(argv)
    die_with_parent()
    debug = bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        print("error: interrupted; a training run continues from its last checkpoint with --resume",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place where every failure becomes an exit code
        code, message, bug = exit_code_and_message(e)
        if bug or debug:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        return code


def _entry() -> Any:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover - python -m advcoreset.cli (the bench's extra evaluations)
    sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]  # see advcoreset/__main__.py
    sys.exit(main())
