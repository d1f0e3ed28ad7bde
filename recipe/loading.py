"""The task a config names: `task: module.path:function`, imported and called with the config's `task_args`.

`recipe run`, `recipe train`, tune's worker processes and `load_model` all load a task this way.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

from recipe.errors import ConfigError
from recipe.task import Task


def load_task(spec: str, kwargs: dict[str, Any], where: str) -> Any:
    """Import `module.path:function` (from the current directory too) and call it with `kwargs`; a `ConfigError`
    naming `where` (the config file) when the spec, the import, the arguments or the returned object are wrong."""
    if not spec:
        raise ConfigError(
            f"{where}: no `task:` given; add `task: module.path:function` naming a function that returns a recipe.Task."
        )
    if ":" not in spec:
        raise ConfigError(f"{where}: `task:` must name a function as module.path:function, got {spec!r}.")
    module_name, _, attr = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{where}: cannot import {module_name!r} for `task:` ({exc}); run from the folder that "
            "holds it or install it."
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{where}: {module_name} has no function {attr!r} for `task:`.")
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:  # a misspelt or missing task_args key is a config error, not a crash in user code
        raise ConfigError(f"{where}: task_args do not fit {spec}{inspect.signature(factory)}: {exc}.") from exc
    except ValueError:
        pass  # no inspectable signature (some builtins): let the call decide
    task = factory(**kwargs)
    if not isinstance(task, Task):
        raise ConfigError(f"{where}: {spec} returned {type(task).__name__}; it must return a recipe.Task.")
    return task
