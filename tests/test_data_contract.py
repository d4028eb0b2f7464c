"""The data contract lives in the repo (issue 25, item 6): docs/DATASET.md exists, holds the layout and the known
label errors, and every pointer to it (errors, help texts, README) names that path, not one a clone lacks."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from maskcls.tables import resolve_image_dir
from maskcls.utils import UserError

REPO = Path(__file__).resolve().parents[1]
CONTRACT = REPO / "docs" / "DATASET.md"
# A pointer that only held outside the repo: ../shared/DATASET.md, or DATASET.md with no folder.
STALE = re.compile(r"\.\./shared/|(?<![\w/])DATASET\.md")


def test_the_contract_is_in_the_repo():
    text = CONTRACT.read_text(encoding="utf-8")
    for needed in ("train.csv", "id,gender,race,age,path", "info.csv", "ImageID,ans", "._", "class = mask * 6"):
        assert needed in text, needed
    with open(REPO / "label_fixes.csv", newline="", encoding="utf-8") as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    assert len(ids) == 11 and all(i in text for i in ids), "label_fixes.csv and docs/DATASET.md disagree"


def test_a_missing_data_folder_points_to_the_contract(tmp_path):
    with pytest.raises(UserError, match=r"laid out as in docs/DATASET\.md"):
        resolve_image_dir(tmp_path / "nowhere", "train")


def test_crop_faces_points_to_the_contract(tmp_path):
    proc = subprocess.run(
        [sys.executable, "crop_faces.py", "--data-dir", str(tmp_path / "nowhere")],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "docs/DATASET.md" in proc.stderr


def test_no_pointer_to_a_file_a_clone_lacks():
    files = [*REPO.glob("*.py"), *REPO.glob("*.md"), REPO / "Makefile"]
    files += [p for folder in ("maskcls", "tests", "bench", "docs") for p in (REPO / folder).rglob("*.py")]
    files += [p for folder in ("maskcls", "tests", "bench", "docs") for p in (REPO / folder).rglob("*.md")]
    stale = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in files
        if path != Path(__file__).resolve()  # the pattern's own comment
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if STALE.search(line)
    ]
    assert not stale, "point to docs/DATASET.md instead:\n" + "\n".join(stale)
