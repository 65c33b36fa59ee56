"""One version source: pixpipe.__version__, which packaging, the CLI and the API all report."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pixpipe
from pixpipe.settings import Settings
from pixpipe_services.gateway.app import create_app

REPO_ROOT = Path(__file__).resolve().parents[2]



def test_the_installed_distribution_reports_the_package_version() -> None:
    assert importlib.metadata.version("pixpipe") == pixpipe.__version__


def test_pyproject_takes_the_version_from_the_package_only() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "pixpipe.__version__"}


def test_the_cli_and_the_openapi_document_say_the_same_version() -> None:
    shown = subprocess.run([sys.executable, "-m", "pixpipe.cli.main", "--version"],
                           capture_output=True, text=True, check=True, timeout=60)
    assert shown.stdout.strip() == f"pixpipe {pixpipe.__version__}"
    assert create_app(Settings()).version == pixpipe.__version__
