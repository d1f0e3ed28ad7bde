"""`loggers: [tensorboard]`: a run's scalars, plots and tune trials are written as TensorBoard event files, and read
back here with TensorBoard's own reader."""

from __future__ import annotations

import pytest

from recipe import Recipe, Tune
from recipe.errors import ConfigError
from tests import tiny

pytest.importorskip("tensorboard", reason="tensorboard is an optional extra: pip install 'recipe[tensorboard]'")


def test_tensorboard_event_files_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = Recipe(
        tiny.classification(),
        run_dir=tmp_path / "run",
        stages=["overfit", Tune(trials=4, epochs=2, seeds=0)],
        device="cpu",
        progress=False,
        quiet=True,
        loggers=["tensorboard"],
    ).run()
    assert result.ok
    board = result.run_dir / "tensorboard"
    events = EventAccumulator(str(board), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars, images = events.Tags()["scalars"], events.Tags()["images"]
    assert "overfit/overfit_batch/train_loss" in scalars
    assert len(events.Scalars("overfit/overfit_batch/train_loss")) > 3
    assert any(tag.startswith("tune/trials_trial") for tag in scalars)
    assert "overfit/overfit_batch" in images and "tune/best_so_far" in images
    trial_runs = [p for p in board.iterdir() if p.is_dir() and p.name.startswith("trial_")]
    assert len(trial_runs) == 4
    hparams = EventAccumulator(str(trial_runs[0]))
    hparams.Reload()
    assert "hparam/val_loss" in hparams.Tags()["scalars"]


def test_an_unknown_logger_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="loggers"):
        Recipe(tiny.classification(), run_dir=tmp_path, loggers=["wandb"])
