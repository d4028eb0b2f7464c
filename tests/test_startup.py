"""--help and a bad argument answer without importing torch (issue 14): each script runs as the user runs it,
in a fresh process under ``python -X importtime``, whose list of imported modules must hold no torch,
torchvision or timm. No wall-clock threshold: what is imported is what makes --help slow (BENCHMARKS.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = (
    "train.py", "dataset.py", "ensemble.py", "experiments.py", "synthetic_data.py",
    "crop_faces.py", "inference.py", "audit_labels.py", "sweep.py", "verdict.py", "pseudo_label.py",
)  # fmt: skip
HEAVY = {"torch", "torchvision", "timm"}
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$", re.MULTILINE)


def run(script: str, *argv: str) -> tuple[int, str, set[str]]:
    """(exit code, stdout, the heavy top-level packages the process imported)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", script, *argv],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    imported = {name.split(".")[0] for name in IMPORTED.findall(proc.stderr)}
    assert imported, "python -X importtime listed no module: the check would pass for nothing"
    return proc.returncode, proc.stdout, imported & HEAVY


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_imports_no_torch(script):
    code, out, heavy = run(script, "--help")
    assert code == 0 and "usage:" in out
    assert not heavy, f"{script} --help imported {sorted(heavy)}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bad_flag_is_answered_without_torch(script):
    code, _, heavy = run(script, "--no-such-flag")
    assert code == 2 and not heavy, f"{script} imported {sorted(heavy)} to reject a flag"


def test_train_help_still_lists_the_registries():
    _, out, _ = run("train.py", "--help")
    for name in ("ResNet18", "EffB3", "NFNetL0", "focal", "label_smoothing", "madgrad", "cyclic", "(default: 64)"):
        assert name in out, name


@pytest.mark.parametrize(
    "argv", [["--resize", "64"], ["--fold", "x"], ["--optimizer", "lion"], ["--criterion", "nope"], ["--fold", "7"]]
)
def test_train_refuses_bad_values_without_torch(argv, tmp_path):
    code, _, heavy = run("train.py", *argv, "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "runs"))
    assert code == 2 and not heavy, f"train.py {' '.join(argv)} imported {sorted(heavy)}"
    assert not (tmp_path / "runs").exists()
