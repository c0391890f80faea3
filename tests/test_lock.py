"""The lock files agree with pyproject.toml and with what the tests run on.

`make install` installs requirements/dev.txt (hashes checked), so a fresh clone runs the
versions the tests passed with; a dependency added to or narrowed in pyproject.toml without
`make lock` would be missing from that install, or installed at a version it refuses."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)", re.MULTILINE)
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]
DEV = [Requirement(r) for r in PROJECT["optional-dependencies"]["dev"]]


def pins(lock: str) -> dict[str, str]:  # (keys: canonical names)
    text = (ROOT / "requirements" / lock).read_text()
    return {canonicalize_name(name): version for name, version in PIN.findall(text)}


@pytest.mark.parametrize(
    ("lock", "requirements"), [("runtime.txt", RUNTIME), ("dev.txt", RUNTIME + DEV)]
)
def test_every_requirement_is_pinned_within_its_range(
    lock: str, requirements: list[Requirement]
) -> None:
    pinned = pins(lock)
    for requirement in requirements:
        version = pinned.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement} is not in requirements/{lock}: make lock"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements/{lock} pins {requirement.name}=={version}, outside {requirement}:"
            " make lock"
        )


@pytest.mark.parametrize("lock", ["runtime.txt", "dev.txt"])
def test_every_pin_has_a_hash(lock: str) -> None:
    blocks = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / "requirements" / lock).read_text())
    unhashed = [b.split()[0] for b in blocks if "==" in b.split()[0] and "--hash=" not in b]
    assert not unhashed, f"pins without a hash in requirements/{lock}: {unhashed}"


def test_the_tests_run_on_the_locked_versions() -> None:
    installed: dict[str, str] = {
        canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()
    }
    differing = {
        name: (version, installed.get(name))
        for name, version in pins("dev.txt").items()
        if installed.get(name) != version
    }
    assert not differing, f"locked and installed versions differ (make install): {differing}"
