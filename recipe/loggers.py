"""Loggers that mirror the run directory into other tools (`loggers: [tensorboard]` in a config).

A logger reads what a finished stage wrote (its metrics.jsonl records, its PNGs, the tune stage's trials.csv), the
way the report does, so it sees every record, including those of tune's worker processes.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from recipe.errors import ConfigError
from recipe.rundir import RunDir, stage_folder

LOGGERS = ("tensorboard",)


def make_loggers(names: list[str] | tuple[str, ...], run_dir: Path) -> list[Any]:
    """The loggers named in the config, checked before anything runs."""
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ConfigError(f"loggers: unknown {unknown}; available: {', '.join(LOGGERS)}.")
    return [TensorBoard(run_dir) for n in names if n == "tensorboard"]


class TensorBoard:
    """Writes run_dir/tensorboard/: scalars per stage and run, each stage's plots as images, tune's trials as
    hyperparameter runs. View with `tensorboard --logdir RUN_DIR/tensorboard`."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                "loggers: tensorboard needs the tensorboard package: pip install 'recipe[tensorboard]'."
            ) from exc
        self.path = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(str(self.path))

    def stage(self, rundir: RunDir, stage: str, stages: list[str]) -> None:
        import matplotlib.image  # only the tensorboard logger reads the PNGs back: matplotlib is loaded for it

        for r in rundir.read_metrics():
            value = r.get("value")
            if r.get("stage") == stage and isinstance(value, int | float) and math.isfinite(value):
                run = r.get("run", "run") + (f"_trial{r['trial']}" if "trial" in r else "")
                self.writer.add_scalar(f"{stage}/{run}/{r.get('split')}_{r.get('metric')}", value, r.get("step", 0))
        folder = rundir.path / stage_folder(stage, stages)
        for png in sorted(folder.glob("*.png")) if folder.exists() else []:
            self.writer.add_image(f"{stage}/{png.stem}", matplotlib.image.imread(str(png))[:, :, :3], dataformats="HWC")
        trials = folder / "trials.csv"
        if stage == "tune" and trials.exists():
            self._trials(trials)
        self.writer.flush()

    def _trials(self, path: Path) -> None:
        with path.open() as f:
            for row in csv.DictReader(f):
                if not row["trial"].isdigit():
                    continue  # the last row holds each parameter's importance, not a trial
                metrics = {f"hparam/{k}": float(row.pop(k)) for k in list(row) if k.startswith("val_") and row[k]}
                number = row.pop("trial")
                params = {k: _number(v) for k, v in row.items()}
                self.writer.add_hparams(params, metrics, run_name=f"trial_{number}")

    def close(self) -> None:
        self.writer.close()


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text
