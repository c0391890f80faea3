"""Sandbar's version. pyproject.toml's ``version`` is the only place it is written: the
API's OpenAPI document and ``sandbar --version`` read it from the installed package's
metadata (``make install`` installs again whenever pyproject.toml changes), and from
pyproject.toml itself in a source tree that was never installed."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DISTRIBUTION = "sandbar"


def _version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        with pyproject.open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])


VERSION = _version()
