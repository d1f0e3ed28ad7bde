"""Faults and bad inputs: kill -9, SIGTERM, SIGINT, a full disk, corrupted and hostile files, two runs on one
directory, and twenty bad configs and tasks, each through the real code; one table, one summary line.

    python benchmarks/faults.py [--only NAME[,NAME]] [--skip-bad-inputs] [--keep DIR]

The fault scenarios are `tests/reliability/scenarios.py`, which the tests run too (tests/reliability/
test_faults.py): a fault survived means the run resumed to the weights, history and metrics rows of an uninterrupted
run, or the bad file was refused with a one-line error. A bad input has a clear error when `recipe run` exits with
status 2, prints one line on stderr and leaves no run directory behind. The last line reads

    faults survived N/M, bad inputs with a clear error N/M, rows lost R, trials lost T, user files lost U,
    hostile files executed H

where R counts metrics rows missing from a resumed run, T trials lost, counted twice or left RUNNING, U files of the
user's (or of an earlier run's other stages) lost or changed in a run directory, and H the
hostile files (a pickled checkpoint, a YAML tag) whose code ran.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipe import Task
from tests import tiny
from tests.reliability import fit_boundaries as fb
from tests.reliability import scenarios as sc

# ---- the fault scenarios -------------------------------------------------------------------------------------------


class References:
    """The uninterrupted runs the scenarios compare with, computed once, when first needed."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._fit: sc.FitRun | None = None
        self._rows: list[str] | None = None
        self._boundaries: dict[str, Any] | None = None

    @property
    def fit(self) -> sc.FitRun:
        if self._fit is None:
            self._fit = sc.reference_fit(self.folder / "reference_fit")
        return self._fit

    @property
    def boundaries(self) -> dict[str, Any]:
        if self._boundaries is None:
            self._boundaries = fb.reference(self.folder / "reference_boundaries")
        return self._boundaries

    @property
    def rows(self) -> list[str]:
        if self._rows is None:
            self._rows = sc.reference_run(self.folder / "reference_run")
        return self._rows


def fault_scenarios(ref: References) -> dict[str, Callable[[Path], sc.Outcome]]:
    table: dict[str, Callable[[Path], sc.Outcome]] = {}
    for point in sc.FIT_POINTS:
        table[f"kill_fit_{point}"] = lambda d, p=point: sc.kill_fit(d, p, ref.fit)
    table["sigterm_fit"] = lambda d: sc.signal_fit(d, signal.SIGTERM, ref.fit)
    table["sigint_fit"] = lambda d: sc.signal_fit(d, signal.SIGINT, ref.fit)
    table["kill_before_rename"] = lambda d: sc.kill_in_write(d, "last.pt", 3, ref.fit)
    table["kill_sidecar_before_rename"] = lambda d: sc.kill_in_write(d, "last.pt.sha256", 3, ref.fit)
    table["kill_sidecar_after_rename"] = lambda d: sc.kill_in_write(d, "last.pt.sha256", 4, ref.fit)
    table["enospc_fit"] = lambda d: sc.enospc_fit(d, ref.fit)
    table["enospc_run"] = sc.enospc_run
    table["kill_tune"] = sc.kill_tune
    table["sigint_tune"] = lambda d: sc.signal_tune(d, signal.SIGINT)  # tune under interruption (issue 15)
    table["sigterm_tune"] = lambda d: sc.signal_tune(d, signal.SIGTERM)
    table["sigint_tune_workers"] = lambda d: sc.signal_tune_workers(d, signal.SIGINT)
    table["sigterm_tune_workers"] = lambda d: sc.signal_tune_workers(d, signal.SIGTERM)
    table["kill_tune_workers"] = sc.kill_tune_workers
    table["torn_journal"] = sc.torn_journal
    table["kill_run"] = lambda d: sc.signal_run(d, signal.SIGKILL, ref.rows)
    table["sigterm_run"] = lambda d: sc.signal_run(d, signal.SIGTERM, ref.rows)
    table["sigint_run"] = lambda d: sc.signal_run(d, signal.SIGINT, ref.rows)
    for how in sc.CORRUPTIONS:
        table[f"corrupt_{how}"] = lambda d, h=how: sc.corrupted_checkpoint(d, h)
    table["two_runs"] = sc.two_runs
    table["hostile_checkpoint_load"] = lambda d: sc.hostile_checkpoint(d, "load")
    table["hostile_checkpoint_fit"] = lambda d: sc.hostile_checkpoint(d, "fit")
    table["hostile_yaml"] = sc.hostile_yaml
    for name in sc.MALFORMED:  # issue 15, item 5: a malformed file is one line naming it
        table[f"malformed_{name}"] = lambda d, n=name: sc.malformed_run_file(d, n)
    table["last_pt_lacks_keys"] = sc.checkpoint_lacking_keys
    table["hostile_report"] = sc.hostile_report  # item 7: every value in report.html escaped
    table["yaml_bomb"] = sc.yaml_bomb
    table["user_files_run_dir"] = fb.user_files  # issue 15, item 1: a run directory is recipe's only where it wrote
    table["other_stages_keep_results"] = fb.other_stages
    for n in range(1, fb.FITS + 1):  # item 2: killed at every fit boundary of every stage, then resumed
        table[f"kill_at_fit_{n}"] = lambda d, n=n: fb.kill_at_fit(d, n, ref.boundaries)
    return table


# ---- bad inputs through the command line ---------------------------------------------------------------------------

GOOD = """\
task: benchmarks.faults:bad_task
task_args: {case: clean}
run_dir: RUN
stages: [overfit]
train: {batch_size: 16}
overfit: {batch_size: 8, steps: 20, lr_steps: 10}
"""


def bad_task(case: str = "clean") -> Any:
    """tests.tiny's classification, spoiled one way (`case`), for the bad-input table."""
    task = tiny.classification()
    x, y = tiny.blobs(256, 0)
    if case == "not_a_task":
        return {"train": (x, y)}
    if case == "labels_out_of_range":
        y = y.clone()
        y[3] = tiny.CLASSES + 3
        return Task(train=(x, y), val=tiny.blobs(128, 1), model=tiny.MLP, num_classes=tiny.CLASSES)
    if case == "wrong_output":
        return task.replace(model=lambda: nn.Linear(tiny.FEATURES, tiny.CLASSES + 2))
    if case == "same_model_twice":
        shared = tiny.MLP()
        return task.replace(model=lambda: shared)
    if case == "zero_dim_target":
        return Task(train=(x, torch.tensor(1)), val=tiny.blobs(128, 1), model=tiny.MLP)
    if case == "len_overstated":  # __len__ counts 10 samples more than __getitem__ serves

        class Overstated(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(y) + 10

            def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
                return x[i], y[i]

        return task.replace(train=Overstated())
    if case == "token_ids_past_embedding":
        tx, ty = tiny.sequence_pairs(64, 0)
        tx = tx.clone()  # a view of the stream the targets are cut from
        tx[40, 5] = tiny.VOCAB + 2
        return tiny.sequence().replace(train=(tx, ty))
    return task


def _edit(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


BAD_INPUTS: dict[str, str | None] = {  # name -> config text (None: no config file at all)
    "config file missing": None,
    "YAML syntax error": GOOD.replace("stages: [overfit]", "stages: [overfit"),
    "config not a mapping": "- task\n- stages\n",
    "duplicate key": GOOD + "stages: [baseline]\n",
    "unknown top-level key": _edit("stages:", "stage:"),
    "unknown stage": _edit("[overfit]", "[overfitt]"),
    "unknown stage setting": _edit("steps: 20", "stpes: 20"),
    "wrong type": _edit("batch_size: 16}", 'batch_size: 16, epochs: "ten"}'),
    "negative learning rate": _edit("batch_size: 16}", "batch_size: 16, lr: -0.1}"),
    "unknown optimizer": _edit("batch_size: 16}", "batch_size: 16, optimizer: adamm}"),
    "unknown device": GOOD + "device: tpu\n",
    "task module missing": _edit("benchmarks.faults:bad_task", "no_such_module:make_task"),
    "task function missing": _edit("benchmarks.faults:bad_task", "benchmarks.faults:no_such_function"),
    "task_args do not fit": _edit("{case: clean}", "{case: clean, colour: red}"),
    "task is not a Task": _edit("case: clean", "case: not_a_task"),
    "labels out of range": _edit("case: clean", "case: labels_out_of_range"),
    "unknown schedule": _edit("batch_size: 16}", "batch_size: 16, schedule: cosin}"),
    "no stages": _edit("[overfit]", "[]"),
    "model output of the wrong shape": _edit("case: clean", "case: wrong_output"),
    "factory returns one model twice": _edit("case: clean", "case: same_model_twice"),
    "batch larger than the data": _edit("batch_size: 16}", "batch_size: 100000}"),
    "run_dir under a file": _edit("run_dir: RUN", "run_dir: CONFIG/run"),
    "--resume with no run there": GOOD,
    # issue 15, item 6
    '--stages ""': GOOD,
    "seed out of range": _edit("stages:", "seed: -1\nstages:"),
    "seed of the wrong type": _edit("stages:", "seed: 1.5\nstages:"),
    "ladder key the factory does not take": _edit("[overfit]", "[overfit, complexify]")
    + "complexify: {ladder: {small: {hidden: 8}}}\n",
    "inspect.max_samples: 0": _edit("[overfit]", "[inspect, overfit]") + "inspect: {max_samples: 0}\n",
    "tune.trials: 0": _edit("[overfit]", "[overfit, tune]") + "tune: {trials: 0}\n",
    "unknown storage scheme": _edit("[overfit]", "[overfit, tune]") + "tune: {storage: 'redis://localhost'}\n",
    "overfit.batch_size: 0": _edit("{batch_size: 8,", "{batch_size: 0,"),
    "0-dim target": _edit("case: clean", "case: zero_dim_target"),
    "Dataset __len__ overstates its data": _edit("case: clean", "case: len_overstated"),
    "token ids past the embedding": _edit("case: clean", "case: token_ids_past_embedding"),
}


def bad_input(name: str, text: str | None, folder: Path) -> dict[str, Any]:
    """Run one bad input through `recipe run`; exit status 2, one stderr line and no run directory make it clear."""
    folder.mkdir(parents=True, exist_ok=True)
    config, run_dir = folder / "config.yaml", folder / "run"
    if text is not None:
        config.write_text(text.replace("RUN", str(run_dir)).replace("CONFIG", str(config)))
    extra = ["--resume", str(run_dir)] if name.startswith("--resume") else []
    extra = ["--stages", ""] if name.startswith("--stages") else extra
    try:
        rc, said = sc.command(str(config), *extra)
    except Exception as exc:
        rc, said = -1, f"{type(exc).__name__} escaped: {exc}"
    lines = said.strip().splitlines()
    clear = rc == 2 and len(lines) == 1 and lines[0].startswith("recipe: error:") and not run_dir.exists()
    message = lines[0].removeprefix("recipe: error: ") if len(lines) == 1 else f"{len(lines)} lines: {said[-200:]}"
    return {"name": name, "exit": rc, "clear": clear, "left_run_dir": run_dir.exists(), "message": message}


# ---- the table -----------------------------------------------------------------------------------------------------


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated scenario names (see the table); bad inputs still run")
    parser.add_argument("--skip-bad-inputs", action="store_true")
    parser.add_argument("--keep", help="keep the scenarios' folders here instead of a temporary folder")
    parser.add_argument("--verbose", action="store_true", help="print what each failed scenario measured")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="recipe-faults-"))
    base.mkdir(parents=True, exist_ok=True)
    ref = References(base)
    table = fault_scenarios(ref)
    chosen = args.only.split(",") if args.only else list(table)
    unknown = [n for n in chosen if n not in table]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(table)}")
    outcomes = []
    try:
        print(f"{'scenario':<26} {'kind':<8} {'outcome':<9} {'s':>5}  detail")
        for name in chosen:
            start = time.perf_counter()
            try:
                out = table[name](base / name)
            except Exception as exc:
                out = sc.Outcome(name, "fault", False, f"the scenario crashed: {type(exc).__name__}: {exc}")
            outcomes.append(out)
            verdict = "survived" if out.survived else "FAILED"
            seconds = time.perf_counter() - start
            print(f"{name:<26} {out.kind:<8} {verdict:<9} {seconds:5.1f}  {_cut(out.detail, 150)}", flush=True)
            if args.verbose and not out.survived:
                print(f"    {out.facts}")

        bad = []
        if not args.skip_bad_inputs:
            print(f"\n{'bad input':<34} {'exit':>4}  {'clear':<5}  message")
            for name, text in BAD_INPUTS.items():
                row = bad_input(name, text, base / "bad" / name.replace(" ", "_").replace("/", "_"))
                bad.append(row)
                print(f"{name:<34} {row['exit']:>4}  {'yes' if row['clear'] else 'NO':<5}  {_cut(row['message'], 140)}")
    finally:
        if not args.keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(base)
    print(
        f"\nfaults survived {sum(o.survived for o in outcomes)}/{len(outcomes)}, "
        f"bad inputs with a clear error {sum(r['clear'] for r in bad)}/{len(bad)}, "
        f"rows lost {sum(o.rows_lost for o in outcomes)}, trials lost {sum(o.trials_lost for o in outcomes)}, "
        f"user files lost {sum(o.user_files_lost for o in outcomes)}, "
        f"hostile files executed {sum(o.hostile_executed for o in outcomes)}"
    )
    return 0 if all(o.survived for o in outcomes) and all(r["clear"] for r in bad) else 1


if __name__ == "__main__":
    raise SystemExit(main())
