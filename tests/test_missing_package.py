"""A missing third-party package is one line naming `make install` (issue 25, item 9).

``python train.py`` outside the virtual environment used to end in a raw ``ModuleNotFoundError: No module named
'PIL'``. maskcls/__init__.py installs a sys.excepthook that turns it into one line; every root script imports
maskcls before any third-party package, so the hook is in place in time. ``python -S`` (no site-packages: no numpy,
PIL or torch) is such an interpreter, for real.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from maskcls import missing_dependency

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in REPO.glob("*.py"))
LINE = "run make install and use .venv/bin/python (or source .venv/bin/activate)"
ONE_LINE = re.compile(rf"error: the package '(\w+)' is missing \(No module named '\1'\); {re.escape(LINE)}\n")


def run(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)


def test_every_root_script_is_listed():
    assert {"train.py", "dataset.py", "inference.py", "crop_faces.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_script_without_its_packages_says_make_install(script):
    proc = run("-S", script, "--help")  # -S: no site-packages, as a python outside .venv
    assert proc.returncode != 0
    assert ONE_LINE.fullmatch(proc.stderr), f"{script}: {proc.stderr}"


def test_a_package_imported_late_is_one_line_too():
    # torch is imported inside main (model.py --build): the error passes through run_main to the hook.
    code = (
        "import runpy, sys; sys.modules['torch'] = None; sys.argv = ['model.py', '--build', 'ResNet18']; "
        "runpy.run_path('model.py', run_name='__main__')"
    )
    proc = run("-c", code)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the package 'torch' is missing") and LINE in lines[0], lines


def test_a_missing_module_of_the_project_keeps_its_traceback():
    proc = run("-c", "import maskcls; import maskcls.no_such_module")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "No module named 'maskcls.no_such_module'" in proc.stderr
    assert "make install" not in proc.stderr


@pytest.mark.parametrize(
    "name, one_line",
    [
        ("no_such_package_xyz", True),  # not installed: make install
        ("no_such_package_xyz.sub", True),
        ("numpy.no_such_submodule", False),  # installed, a version mismatch: the traceback says more
        ("maskcls.no_such_module", False),  # the project's own
        ("json.no_such", False),  # the standard library's
        (None, False),
    ],
)
def test_which_errors_become_one_line(name, one_line):
    line = missing_dependency(ModuleNotFoundError(f"No module named {name!r}", name=name))
    assert (line is not None) == one_line
    if one_line:
        assert line == f"the package {name.split('.')[0]!r} is missing (No module named {name!r}); {LINE}"


def test_other_errors_are_left_alone():
    assert missing_dependency(ImportError("cannot import name 'x' from 'numpy'", name="numpy")) is None
    assert missing_dependency(ValueError("bad")) is None
