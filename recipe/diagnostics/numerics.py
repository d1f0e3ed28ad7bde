"""The failed `non_finite` check for a training run a NaN/Inf loss stopped (`fit` names where the value first
appeared: `recipe.loss_log.first_non_finite_parameter` and `first_non_finite_module`)."""

from __future__ import annotations

from recipe.check import Check, failed
from recipe.errors import NonFiniteError


def non_finite(exc: NonFiniteError) -> Check:
    """The failed `non_finite` check for a training run stopped by a NaN/Inf loss (O4 in the bug catalog)."""
    value = {"step": exc.step, "parameter": exc.parameter, "module": exc.module, "indices": exc.indices}
    return failed("non_finite", str(exc), value, "a finite loss at every step")
