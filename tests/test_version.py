"""One version source: pyproject.toml's ``version`` is what the running server's OpenAPI
document and ``sandbar --version`` say."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import httpx

from tests.conftest import ROOT


def pyproject_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def test_the_served_openapi_document_carries_pyprojects_version(server: str) -> None:
    r = httpx.get(f"{server}/openapi.json", timeout=30)
    assert r.status_code == 200
    assert r.json()["info"]["version"] == pyproject_version()


def test_sandbar_version_prints_pyprojects_version() -> None:
    sandbar = Path(sys.executable).parent / "sandbar"  # the installed console script
    done = subprocess.run(
        [str(sandbar), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sandbar {pyproject_version()}"
