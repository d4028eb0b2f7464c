"""Reproducible installs (issue 23, point 6): constraints.txt pins every package that requirements.txt names, and
the environment the suite runs in is exactly the pinned one."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lines(name: str) -> list[str]:
    lines = (REPO / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def pins() -> dict[str, str]:
    out = {}
    for line in _lines("constraints.txt"):
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not pinned with =="
        out[_canonical(name.split("[")[0])] = version
    return out


def test_every_requirement_is_pinned():
    pinned = pins()
    for line in _lines("requirements.txt"):
        name = _canonical(re.split(r"[\[<>=!~ ;]", line, maxsplit=1)[0])
        assert name in pinned, f"{name} is in requirements.txt but not in constraints.txt: run `make lock`"


def test_installed_versions_are_the_pinned_ones():
    pinned = pins()
    for line in _lines("requirements.txt"):
        name = _canonical(re.split(r"[\[<>=!~ ;]", line, maxsplit=1)[0])
        assert metadata.version(name) == pinned[name], (
            f"{name}: installed {metadata.version(name)}, pinned {pinned[name]}"
        )
