"""The config reference (docs/config.md), generated from the settings dataclasses' own defaults and docstrings, so
it cannot drift from the code: `python -m recipe.reference > docs/config.md` (a test compares the two).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

from recipe.config import RunConfig, TrainSettings
from recipe.stages import STAGES


def _descriptions(cls: type) -> dict[str, str]:
    """Argument descriptions from the Google-style "Args:" blocks of `cls` and its bases (a field a base declares,
    such as a stage's `skip`, is described there), continuation lines joined."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(_own_descriptions(klass))
    return out


def _own_descriptions(cls: type) -> dict[str, str]:
    doc = inspect.cleandoc(cls.__doc__ or "")
    block = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    out: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        match = re.match(r"\s{4}(\w+): (.*)", line)
        if match:
            name = match.group(1)
            out[name] = match.group(2).strip()
        elif name and line.startswith(" " * 8):
            out[name] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    return out


def _type(hint: Any) -> str:
    text = str(hint).replace("typing.", "")
    return re.sub(r"<class '(\w+)'>", r"\1", text)


def section(title: str, key: str, cls: type) -> str:
    hints = typing.get_type_hints(cls)
    notes = _descriptions(cls)
    rows = [f"## `{key}`: {title}", "", "| key | default | type | meaning |", "| --- | --- | --- | --- |"]
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    fields = dataclasses.fields(cls)
    for field in [*(f for f in fields if f.name not in inherited), *(f for f in fields if f.name in inherited)]:
        if field.default is not dataclasses.MISSING:
            default: Any = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = ""
        meaning = notes.get(field.name, "").replace("|", "\\|")
        kind = _type(hints[field.name]).replace("|", "\\|")
        rows.append(f"| `{field.name}` | `{default!r}` | `{kind}` | {meaning} |")
    return "\n".join(rows)


def reference() -> str:
    parts = [
        "# Config reference",
        "",
        "Generated from the code (`python -m recipe.reference > docs/config.md`); every key, its default and its",
        "meaning. A YAML config has the top-level keys below, a `train:` section and one section per stage; an",
        "unknown key is an error that names the closest valid one.",
        "",
        section("the top level", "(top level)", RunConfig),
        "",
        section("the training settings every stage starts from", "train", TrainSettings),
    ]
    for name, stage in STAGES.items():
        summary = (stage.__doc__ or name).splitlines()[0].rstrip(".")
        parts += ["", section(f"stage `{name}`, {summary}", name, stage.settings_cls)]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
