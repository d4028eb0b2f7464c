"""Label fixes: the user-editable CSV of corrections (id,field,value) to train.csv's gender, age and the
incorrect_mask/normal swap, read and applied to the persons before any image record is built.
The repo's file is label_fixes.csv; train.py's --label-fixes / --no-label-fixes pick another or none.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from maskcls import utils
from maskcls.labels import GENDER_BY_NAME
from maskcls.utils import UserError

if TYPE_CHECKING:
    from maskcls.tables import Person  # tables imports this module to apply the fixes

DEFAULT_FIXES = Path(__file__).resolve().parents[1] / "label_fixes.csv"
FIX_FIELDS = ("gender", "age", "mask_swap")


def label_fixes_path(value: str | None) -> Path | None:
    """train.py's --label-fixes value as a file: None (unset) is the repo's file, "none" is no fixes."""
    return None if value == "none" else Path(value or DEFAULT_FIXES)


MASK_SWAP = "incorrect_mask<->normal"


@dataclass(frozen=True)
class Fix:
    id: str
    field: str  # gender | age | mask_swap
    value: str  # male/female | whole years | "incorrect_mask<->normal"


def read_label_fixes(csv_path: str | os.PathLike = DEFAULT_FIXES) -> list[Fix]:
    """Label corrections (id,field,value) from a user-editable CSV; ``#`` lines are comments.

    One UserError lists every bad row (unknown field, bad value, the same id+field twice).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"label fixes file {csv_path} not found; restore it, pass another file or use --no-label-fixes")
    _, rows = utils.read_csv_table(csv_path, ("id", "field", "value"), "label fixes", comments=True)
    fixes, problems, seen = [], [], {}
    for lineno, row, _ in rows:
        pid, field, value = row["id"] or "", (row["field"] or "").lower(), row["value"] or ""
        error = None
        if not pid:
            error = "empty id"
        elif field not in FIX_FIELDS:
            error = f"field {row['field']!r} is not one of {', '.join(FIX_FIELDS)}"
        elif field == "gender":
            value = value.lower()
            if value not in GENDER_BY_NAME:
                error = f"gender value {row['value']!r} is not male/female"
        elif field == "age":
            try:
                if not 0 <= int(value) <= 150:
                    error = f"age value {value} is not a plausible age (0..150)"
            except ValueError:
                error = f"age value {value!r} is not a whole number"
        elif field == "mask_swap":
            pair = {s.strip().lower() for s in value.split("<->")}
            if pair != {"incorrect_mask", "normal"}:
                error = f"mask_swap value {value!r} is not {MASK_SWAP}"
            value = MASK_SWAP
        if error is None and (pid, field) in seen:
            error = f"{pid} {field} already fixed on line {seen[(pid, field)]}"
        if error:
            problems.append(f"line {lineno}: {error}")
            continue
        seen[(pid, field)] = lineno
        fixes.append(Fix(id=pid, field=field, value=value))
    if problems:
        raise utils.bad_rows_error(
            csv_path,
            problems,
            "columns id,field,value; field gender (value male/female), age (whole years) or "
            f"mask_swap (value {MASK_SWAP}); or use --no-label-fixes",
        )
    return fixes


def apply_label_fixes(persons: Sequence[Person], fixes: Iterable[Fix]) -> tuple[list[Person], set[str], str]:
    """Persons with gender/age fixes applied, the ids whose incorrect_mask/normal labels swap, and a log line.

    Ids not in ``persons`` are counted in the log line, not an error: the fix list is shared
    between data versions and the synthetic stand-in.
    """
    by_id = {p.id: p for p in persons}
    applied, unchanged, absent, swapped = 0, 0, [], set()
    for fix in fixes:
        person = by_id.get(fix.id)
        if person is None:
            if fix.id not in absent:
                absent.append(fix.id)
            continue
        applied += 1
        if fix.field == "mask_swap":
            swapped.add(fix.id)
            continue
        value = fix.value if fix.field == "gender" else int(fix.value)
        if getattr(person, fix.field) == value:
            unchanged += 1
        by_id[fix.id] = replace(person, **{fix.field: value})
    report = f"label fixes: applied {applied} fixes, {len(absent)} ids not present"
    if absent:
        report += f" ({', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''})"
    if unchanged:
        report += f"; {unchanged} already matched the data"
    return [by_id[p.id] for p in persons], swapped, report
