"""Run a module as `python -m` would, with a fault armed (`tests.reliability.faults`):

    python -m tests.reliability.faulty SPEC -- MODULE [ARGS...]

for example `python -m tests.reliability.faulty kill_before_rename:2:last.pt -- recipe.cli run config.yaml`. An empty
SPEC runs the module with nothing armed.
"""

from __future__ import annotations

import runpy
import sys

from tests.reliability import faults


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: python -m tests.reliability.faulty SPEC -- MODULE [ARGS...]")
    spec, module, args = argv[0], argv[2], argv[3:]
    faults.inject(spec)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
