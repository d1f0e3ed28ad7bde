"""Per-position class targets with padding left unscored (IGNORE_INDEX), as `F.cross_entropy` does: the data checks,
the init and the baselines count only scored positions, so a padded tagger run as classification is clean."""

from __future__ import annotations

import tempfile

import pytest

from recipe import Recipe
from recipe.errors import TaskError
from recipe.task import IGNORE_INDEX
from tests import new_kinds as nk


class ClassesFirst(nk.Tagger):
    """The tagger with its class axis second, (B, C, T), as cross-entropy over positions expects."""

    def forward(self, ids):
        return super().forward(ids).transpose(1, 2)


def run(task):
    with tempfile.TemporaryDirectory() as tmp:
        result = Recipe(task, run_dir=f"{tmp}/run", stages=["inspect", "baseline", "overfit"], device="cpu",
                        keep_going=True, progress=False, quiet=True).run()  # fmt: skip
    return {c.name: c for c in result.checks}


def test_a_padded_tagger_run_as_classification_is_clean():
    task = nk.token_tagging(kind="classification").replace(model=ClassesFirst)
    assert bool((task.targets("train") == IGNORE_INDEX).any())  # padding is there, unscored
    checks = run(task)
    bad = {n: (c.status, c.message) for n, c in checks.items() if c.status in ("fail", "warn", "error")}
    assert not bad, bad


@pytest.mark.parametrize("tag", [nk.TAGS, -3])
def test_a_tag_outside_the_classes_is_still_refused(tag):
    task = nk.token_tagging(kind="classification").replace(model=ClassesFirst)
    x, y = task.train.x.clone(), task.train.y.clone()
    y[0, 0] = tag
    with pytest.raises(TaskError, match="train"):
        run(task.replace(train=(x, y)))
