"""Fail when the installed lock leaves a requirement of pyproject.toml unmet (run make lock).

make venv installs requirements.lock and then pixpipe with --no-deps, so a dependency added to
pyproject.toml without refreshing the lock would otherwise go missing without a word.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement


def unmet(requirement: Requirement, extra: str = "") -> list[str]:
    if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
        return []
    try:
        installed = distribution(requirement.name)
    except PackageNotFoundError:
        return [f"{requirement} (not installed)"]
    if not requirement.specifier.contains(installed.version, prereleases=True):
        return [f"{requirement} (installed {installed.version})"]
    problems = []
    for wanted in sorted(requirement.extras):  # e.g. sqlalchemy[asyncio] needs greenlet
        for line in installed.requires or []:
            inner = Requirement(line)
            if inner.marker and inner.marker.evaluate({"extra": wanted}) \
                    and not inner.marker.evaluate({"extra": ""}):
                problems += unmet(inner, wanted)
    return problems


def main() -> int:
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    problems = [problem for line in wanted for problem in unmet(Requirement(line))]
    for problem in problems:
        print(f"requirements.lock does not satisfy {problem}", file=sys.stderr)
    if problems:
        print("run `make lock` and commit requirements.lock", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
