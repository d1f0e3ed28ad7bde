"""The `recipe` command: a thin wrapper over `Recipe` and `build_report`.

    recipe run CONFIG.yaml [--run-dir DIR] [--device DEV] [--stages a,b,c] [--seed N] [--keep-going] [--quiet]
                           [--no-figures] [--workers N] [--storage URL] [--study NAME] [--resume RUN_DIR [--force]]
    recipe run CONFIG.yaml --print-config     print the resolved config as YAML (every default filled) and exit
    recipe train CONFIG.yaml [--run-dir DIR] [--epochs N] [--device DEV] [--seed N] [--quiet] [--train-on-val]
    recipe report RUN_DIR
    recipe --version

Exit status: 0 when no check failed, 1 when a check failed, 2 for a bad config or task, or a disk that refuses a write
mid-run (one line naming the field or the path; --debug for the traceback), 130 after Ctrl-C and 143 after SIGTERM (the
run directory then holds a report marked interrupted).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import sys
from pathlib import Path
from typing import Any

import yaml

from recipe import __version__
from recipe.config import check_run_dir, effective_config, load_yaml, run_name, split_config
from recipe.errors import ConfigError, RecipeError, StorageError, Terminated
from recipe.rundir import check_owned

DISK_ERRORS = {  # errno -> (how the path was refused, what to do), for a file operation the disk refused mid-run
    errno.ENOSPC: ("writing", "free space or choose another --run-dir"),
    errno.EDQUOT: ("writing", "free space or choose another --run-dir"),
    errno.EROFS: ("writing", "choose a writable --run-dir"),
    errno.EACCES: ("on", "fix the permissions or choose another --run-dir"),
    errno.EPERM: ("on", "fix the permissions or choose another --run-dir"),
}


def run(args: argparse.Namespace) -> int:
    # torch loads here, for the commands that need it, not at start-up: `recipe --help` stays well under a second
    from recipe.loading import load_task
    from recipe.model_io import with_ladder
    from recipe.runner import Recipe
    from recipe.stages import STAGES

    data = load_yaml(args.config)
    config, sections = split_config(data, STAGES, str(args.config))
    stages = config.stages
    if args.stages is not None:
        stages = [name.strip() for name in args.stages.split(",") if name.strip()]
        if not stages:
            raise ConfigError(f"--stages {args.stages!r} names no stage; give a,b,c or leave the flag out.")
    if args.print_config:  # the resolved config, flags over YAML over defaults; nothing is loaded or trained
        print(yaml.safe_dump(_resolved(config, sections, stages, args, STAGES), sort_keys=False), end="")
        return 0
    chosen = getattr(args, "resume", None) or args.run_dir or config.run_dir
    check_run_dir(chosen or "runs")  # before loading data
    if chosen:
        check_owned(chosen)  # a folder recipe did not create: refused before the task's data is even loaded
    task = load_task(config.task, config.task_args, str(args.config))
    task = with_ladder(task, _ladder(sections))  # `train.model` may name a rung of it, whichever stages run
    try:
        recipe = _recipe(Recipe, task, config, sections, stages, args, data)
    except ConfigError as exc:
        raise ConfigError(f"{args.config}: {exc}") from None
    try:
        return 0 if recipe.run().ok else 1
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        how, fix = DISK_ERRORS[exc.errno]
        problem = (exc.strerror or "refused").lower()
        raise StorageError(f"{problem} {how} {exc.filename or recipe.run_dir}; {fix}.") from exc


def _recipe(
    cls: Any, task: Any, config: Any, sections: dict[str, Any], stages: Any, args: argparse.Namespace, data: Any = None
) -> Any:
    """CLI flags over the YAML's values over the defaults; `data`, the YAML itself, goes with the source, so stages
    write configs that keep every section of it."""
    return cls(
        task,
        run_dir=getattr(args, "resume", None) or args.run_dir or config.run_dir,
        stages=stages,
        device=args.device or config.device,
        seed=args.seed if args.seed is not None else config.seed,
        keep_going=args.keep_going or config.keep_going,
        figures=config.figures and not getattr(args, "no_figures", False),
        config={"train": config.train, **sections, **_tune_flags(sections, args)},
        source={"task": config.task, "task_args": config.task_args, **({"config": data} if data else {})},
        loggers=config.loggers,
        resume=bool(getattr(args, "resume", None)),
        force=getattr(args, "force", False),
        progress=not args.quiet,
        quiet=args.quiet,
    )


def _resolved(config: Any, sections: dict[str, Any], stages: Any, args: argparse.Namespace, registry: Any) -> dict:
    """`effective_config` of the config with the command line's flags applied (CLI > YAML > defaults)."""
    config = dataclasses.replace(
        config,
        run_dir=args.run_dir or config.run_dir,
        device=args.device or config.device,
        seed=args.seed if args.seed is not None else config.seed,
        stages=stages,
        keep_going=args.keep_going or config.keep_going,
        figures=config.figures and not getattr(args, "no_figures", False),
    )
    sections = {**sections, **_tune_flags(sections, args)}
    return effective_config(config, sections, {n: s.settings_cls for n, s in registry.items()}, str(args.config))


def _tune_flags(sections: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """--workers / --storage / --study over the config's tune section."""
    flags = {k: getattr(args, k, None) for k in ("workers", "storage", "study")}
    flags = {k: v for k, v in flags.items() if v is not None}
    return {"tune": {**(sections.get("tune") or {}), **flags}} if flags else {}


def _ladder(sections: dict[str, Any]) -> Any:
    """The config's `complexify.ladder` (checked with the rest of the section when the stage is built)."""
    section = sections.get("complexify")
    return section.get("ladder") if isinstance(section, dict) else None


def train(args: argparse.Namespace) -> int:
    """`recipe train CONFIG`: the final training run of the config's settings; `load_model(RUN_DIR)` returns it."""
    from recipe.loading import load_task
    from recipe.model_io import train_model  # torch loads here, as for `run`
    from recipe.stages import STAGES

    data = load_yaml(args.config)
    config, _ = split_config(data, STAGES, str(args.config))
    chosen: str | None = args.run_dir or config.run_dir
    if chosen:
        check_run_dir(chosen)
        check_owned(chosen)  # before the task's data is loaded
    task = load_task(config.task, config.task_args, str(args.config))
    run_dir = chosen or str(Path("runs") / run_name(task.name))
    flags = {"epochs": args.epochs, "device": args.device, "seed": args.seed}
    overrides = {k: v for k, v in flags.items() if v is not None}
    path, val = train_model(data, task, run_dir, args.train_on_val, progress=not args.quiet, **overrides)
    held = (
        " (not held out: the model trained on train+val, so this figure is no estimate of new data; quote the "
        "tune stage's)"
        if args.train_on_val
        else ""
    )
    print(
        f"validation loss {val.loss:.4g}, {task.metric_name} {val.metric:.4g}{held}; model written to {path} "
        f"(recipe.load_model({str(run_dir)!r}) returns it)"
    )
    return 0


def report(args: argparse.Namespace) -> int:
    from recipe.report import build_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "checks.json").exists() and not (run_dir / "manifest.json").exists():
        raise ConfigError(f"{run_dir} holds no recipe run (no checks.json or manifest.json).")
    print(build_report(run_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recipe",
        description="Karpathy's recipe for training neural networks, as staged checks that make silent bugs loud.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--version", action="version", version=f"recipe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("run", help="run the recipe from a YAML config")
    p.add_argument("config", type=Path)
    p.add_argument("--run-dir", help="run directory (default: the config's run_dir, else runs/<task name>)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--stages", help="comma-separated stage names, in order")
    p.add_argument("--seed", type=int)
    p.add_argument("--keep-going", action="store_true", help="run later stages after a failed check")
    p.add_argument("--quiet", action="store_true", help="print only the final summary")
    p.add_argument("--no-figures", action="store_true", help="draw no figures: the checks alone, faster")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run: finished stages are kept")
    p.add_argument("--force", action="store_true", help="with --resume: resume even if the config changed")
    p.add_argument("--workers", type=int, help="tune: local worker processes (overrides tune.workers)")
    p.add_argument("--storage", help="tune: an Optuna storage URL shared by workers on many machines")
    p.add_argument("--study", help="tune: the study name to create or join")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (flags over YAML over defaults) as YAML and exit without training",
    )
    # SUPPRESS: the subcommand's default must not overwrite `recipe --debug run ...`
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    p.set_defaults(handler=run)
    p = commands.add_parser("train", help="train a config's settings (best_config.yaml) into RUN_DIR/final/model.pt")
    p.add_argument("config", type=Path)
    p.add_argument("--run-dir", help="where model.pt goes (default: the config's run_dir, else runs/<task name>)")
    p.add_argument("--epochs", type=int, help="epochs to train (default: the config's train.epochs)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--train-on-val",
        action="store_true",
        help="train on train+val (the final model, once the settings are chosen): the validation figure is not held "
        "out, and early stopping is off",
    )
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    p.set_defaults(handler=train)
    p = commands.add_parser("report", help="rebuild report.html from a run directory")
    p.add_argument("run_dir")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    p.set_defaults(handler=report)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except RecipeError as exc:
        if args.debug:
            raise
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"recipe: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recipe: interrupted (Ctrl-C); the run directory holds a report marked interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("recipe: terminated (SIGTERM); the run directory holds a report marked interrupted", file=sys.stderr)
        return 143


if __name__ == "__main__":
    raise SystemExit(main())
