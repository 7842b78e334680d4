"""Command line: ``advcoreset train | eval | config | bench``.

    advcoreset train                                  # PGD-AT on Fashion-MNIST, CPU defaults
    advcoreset train --config configs/fmnist_craig.yaml --set selection.fraction=0.5
    advcoreset train --out runs/x --resume            # continue a killed run
    advcoreset eval runs/x --autoattack               # clean, PGD-k, AutoAttack -> runs/x/eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from advcoreset import bench
from advcoreset.config import ConfigError, load_config


def _train(args: argparse.Namespace) -> int:
    from advcoreset.training import TrainingError, train

    overrides = list(args.set or [])
    if args.resume and args.config is None and args.out:
        saved = Path(args.out) / "config.yaml"
        if saved.exists():
            args.config = str(saved)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    cfg = load_config(args.config, overrides)
    print(f"advcoreset: training {cfg.objective.name} ({cfg.objective.attack.norm}, eps "
          f"{cfg.objective.attack.eps}) on {cfg.data.name} with {cfg.model.name}, selection "
          f"{cfg.selection.method}" + (f" @ {cfg.selection.fraction}" if cfg.selection.method != "full" else "")
          + f" -> {cfg.out_dir}", flush=True)
    try:
        train(cfg, resume=args.resume)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _eval(args: argparse.Namespace) -> int:
    from advcoreset.evaluation.run import evaluate_run

    res = evaluate_run(args.run, checkpoint=args.checkpoint, n=args.n, pgd_steps=args.pgd_steps,
                       restarts=args.restarts, autoattack=args.autoattack, aa_version=args.aa_version,
                       perceptual=args.perceptual, device=args.device)
    out = Path(args.output) if args.output else Path(args.run) / "eval.json"
    out.write_text(json.dumps(res, indent=2))
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _entry() -> Any:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
