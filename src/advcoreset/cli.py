"""Command line: ``advcoreset train | eval | config | bench``.

    advcoreset train                                  # PGD-AT on Fashion-MNIST, CPU defaults
    advcoreset train --config configs/fmnist_craig.yaml --set selection.fraction=0.5
    advcoreset train --out runs/x --resume            # continue a killed run
    advcoreset eval runs/x --autoattack               # clean, PGD-k, AutoAttack -> runs/x/eval.json
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from advcoreset import bench
from advcoreset.config import ConfigError, load_config


def _train(args: argparse.Namespace) -> int:
    from advcoreset.training import train
    from advcoreset.training.checkpoint import check_resumable, load_checkpoint
    from advcoreset.training.preflight import check_device
    from advcoreset.training.run_folder import check_start, check_writable, finished_results, run_lock

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
    if args.resume and finished_results(out) is not None:
        print(f"advcoreset: {out} holds a finished run ({out / 'results.json'}); nothing to train. "
              f"`advcoreset eval {out}` evaluates it again.", flush=True)
        return 0
    check_writable(out)
    with run_lock(out):
        check_start(out, args.resume)
        if args.resume:
            check_resumable(load_checkpoint(out / "last.pt"), out / "last.pt")
        print(f"advcoreset: training {cfg.objective.name} ({cfg.objective.attack.norm}, eps "
              f"{cfg.objective.attack.eps}) on {cfg.data.name} with {cfg.model.name}, selection "
              f"{cfg.selection.method}" + (f" @ {cfg.selection.fraction}" if cfg.selection.method != "full" else "")
              + f" -> {cfg.out_dir}", flush=True)
        train(cfg, resume=args.resume)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from advcoreset.evaluation.run import evaluate_run
    from advcoreset.training.preflight import check_device
    from advcoreset.training.run_folder import check_output_file, write_json_atomic

    for flag, value in (("--n", args.n), ("--pgd-steps", args.pgd_steps), ("--restarts", args.restarts)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.device is not None:
        check_device(args.device, "--device")
    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run} is not an advcoreset run folder (no {run / 'config.yaml'}); give the --out "
                          "folder of a training run")
    out = check_output_file(Path(args.output) if args.output else run / "eval.json", "eval output file")
    res = evaluate_run(args.run, checkpoint=args.checkpoint, n=args.n, pgd_steps=args.pgd_steps,
                       restarts=args.restarts, autoattack=args.autoattack, aa_version=args.aa_version,
                       perceptual=args.perceptual, device=args.device)
    write_json_atomic(out, res)
    for k, v in res.items():
        if isinstance(v, float):
            print(f"{k}: {v:.4f}")
    print(f"wrote {out}")
    return 0


def _config(args: argparse.Namespace) -> int:
    import yaml

    cfg = load_config(args.config, args.set or [])
    sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return 0


def _bench(args: argparse.Namespace) -> int:
    return bench.run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="advcoreset", description="Adversarial coreset selection for efficient "
                                "robust training.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a (robust) classifier; with no arguments: PGD-AT on Fashion-MNIST")
    t.add_argument("--config", "-c", help="YAML config (see configs/); defaults otherwise")
    t.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set selection.method=craig (repeatable)")
    t.add_argument("--out", help="run folder (overrides out_dir)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.set_defaults(fn=_train)

    e = sub.add_parser("eval", help="evaluate a run's checkpoint: clean, PGD-k, AutoAttack, perceptual")
    e.add_argument("run", help="run folder (holds config.yaml and last.pt)")
    e.add_argument("--checkpoint", default="last.pt", help="last.pt or best.pt (default last.pt)")
    e.add_argument("--n", type=int, default=None, help="test images (default: the run's data.test_subset)")
    e.add_argument("--pgd-steps", type=int, default=None)
    e.add_argument("--restarts", type=int, default=None)
    e.add_argument("--autoattack", action="store_true", help="run AutoAttack too")
    e.add_argument("--aa-version", default="standard", choices=["standard", "fast"])
    e.add_argument("--perceptual", action="store_true", help="also PPGD and LPA at the PAT bound")
    e.add_argument("--device", default=None)
    e.add_argument("--output", "-o", help="JSON file to write (default RUN/eval.json)")
    e.set_defaults(fn=_eval)

    c = sub.add_parser("config", help="print the resolved config (defaults + file + overrides)")
    c.add_argument("--config", "-c")
    c.add_argument("--set", "-s", action="append", metavar="KEY=VALUE")
    c.set_defaults(fn=_config)

    b = sub.add_parser("bench", help="the paper's table: Full/Random/CRAIG/GradMatch across objectives",
                       description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(b)
    b.set_defaults(fn=_bench)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
