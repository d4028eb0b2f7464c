"""python ensemble.py --mode soft --runs runs/r18/fold0 runs/r18/fold1 --answers data/eval/answers.csv

Combine the eval predictions of several runs into one submission, or score the recipe out-of-fold.

Members are run directories that inference.py has written ``eval_probs.npy`` / ``eval_meta.json`` /
``submission.csv`` into; without ``--runs`` every such directory under ``--runs-dir`` (recursively, so
``--fold all`` runs are found) is used, and the list is printed. A ``--fold all`` parent given to ``--runs``
(``runs/<name>``) stands for its ``fold<k>`` runs.

- ``soft``: weighted mean of the members' probabilities, then argmax.
- ``hard``: each member votes for its argmax class (``--weights`` weight the votes). Ties are broken by
  the weighted summed probability of the tied classes; if that is still tied, the lowest class index wins.

Outputs: ``--out`` (ImageID,ans; default ``ensembles/submission_<mode>.csv`` in the folder holding the members,
e.g. ``runs/ensembles/``), ``<out stem>_probs.npy`` next to it (soft: the weighted mean probabilities;
hard: the weighted vote fractions, shape (N, 18): on rows with a tied vote its argmax may differ from ``ans``,
which also used the probability tie-break), and ``<out stem>_report.json`` (members, pairwise agreement,
and with ``--answers`` each member's metrics beside the ensemble's).

``--oof`` checks the recipe on the validation folds instead (no submission is written): members are runs
with ``valid_preds.csv`` (train.py ``--fold K``, same ``--folds``/``--split-seed``); members holding the same
validation rows (same fold, different models) are combined with the same mode and weights, different folds
are concatenated, and the CV metrics per fold and overall (plus each model group's single-model CV) are
printed and written to ``<out stem>_oof_report.json``. A model group is the run directory above
``fold<k>`` (``runs/<name>/fold<k>``), or the run name with a trailing ``fold<k>`` removed, with the ``_2``, ``_3``
train.py adds to a taken name (``r18_fold0_2`` is in ``r18``); its single-model CV uses the ``pred`` column, so it
equals train.py's own cv_summary.json.

``--weights auto`` (``--mode soft`` only) picks one weight per model group from the members' ``valid_preds.csv``
(never the eval answers). On the validation rows that every group validated (a group's probability of a row is
that of its member that validated it), a grid over the group weights (step 0.05 for up to 3 groups, 0.1 for 4,
coarser beyond) is searched for the soft vote with the best out-of-fold macro F1; ties go to the weights closest
to equal. Each member then gets its group's weight divided by the group's member count (``--oof``: by the group's
members on the same validation fold), so a model counts by its group weight however many folds it has. Equal and
chosen weights are printed with their OOF metrics and kept under ``auto_weights`` in the report; the chosen
weights' OOF score is measured on the rows they were chosen on, so it flatters them a little. ``--mode hard``
refuses ``auto``: the search scores soft votes, and group weights on votes mostly decide which group always wins.

``--offsets auto`` (``--mode soft`` only) fits one additive offset per class on the log of the soft vote, the
macro-F-optimal decision rule being a shifted argmax (Narasimhan et al., ICML 2015): coordinate ascent on the
members' out-of-fold rows that ``--weights auto`` uses (every model group validated them; the vote weighs each
group by its members' summed weight), never the eval answers. The offsets are printed and kept under
``offsets`` in the report with the out-of-fold macro F1 before and after (on the rows they were fitted on, so
flattering) and an honest estimate by cross-fitting: fit on half of the persons, score on the other half, both
ways round. The eval submission is the argmax of log(soft vote) + offsets; ``_probs.npy`` stays the vote, and
with ``--answers`` the report also scores the vote without them. With ``--oof`` the offsets are fitted and
reported the same way, and the per-fold scores stay those of the plain vote.

The code is in maskcls/: voting.py (the votes, the eval ensemble), oof.py (``--oof``, ``--weights auto``,
``--offsets auto``), offsets.py (the fit),
members.py (which runs, their names) and runs.py (reading each run's files).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from maskcls.cli import HelpFormatter
from maskcls.members import common_base, find_members, member_names
from maskcls.oof import auto_offsets, auto_weights, oof_ensemble
from maskcls.runs import EVAL_PROBS, VALID_PREDS
from maskcls.utils import UserError, run_main
from maskcls.voting import ensemble_eval


# --------------------------------------------------------------------------- CLI
def parse_weights(values: Sequence[str] | None) -> list[float] | str | None:
    """``--weights`` as typed: None (equal), ``"auto"``, or one float per member."""
    if not values:
        return None
    if any(v.lower() == "auto" for v in values):
        if len(values) > 1:
            raise UserError("--weights auto stands alone; give either the word auto or one number per member")
        return "auto"
    try:
        return [float(v) for v in values]
    except ValueError:
        bad = next(v for v in values if not _is_float(v))
        raise UserError(f"--weights {bad!r} is not a number; give one number per member, or the word auto") from None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--mode", choices=("hard", "soft"), required=True, help="voting rule")
    parser.add_argument("--runs", nargs="+", default=None, help="member run dirs (default: every run found)")
    parser.add_argument("--runs-dir", default="runs", help="where to look for members when --runs is not given")
    parser.add_argument(
        "--weights",
        nargs="+",
        default=None,
        metavar="W",
        help="one weight per member, in order, or auto (soft: one weight per model group, chosen on valid_preds.csv)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="submission to write, report and probs next to it (default: ensembles/submission_<mode>.csv beside "
        "the member runs, e.g. runs/ensembles/; with --oof only its _oof_report.json is written)",
    )
    parser.add_argument("--answers", default=None, help="ImageID,ans CSV to score members and ensemble against")
    parser.add_argument("--oof", action="store_true", help="score the recipe on valid_preds.csv (no submission)")
    parser.add_argument(
        "--offsets",
        choices=("none", "auto"),
        default="none",
        help="auto (--mode soft): per-class log-probability offsets fitted for macro F1 on the members' "
        "valid_preds.csv, added to the soft vote before its argmax",
    )
    return parser


def resolve_weights(
    weights: list[float] | str | None, members: list[Path], per_fold: bool
) -> tuple[list[float] | None, dict | None]:
    """(member weights, report entry): ``auto`` is searched on the members' OOF predictions, numbers pass through."""
    if weights != "auto":
        return weights, None
    weights, info = auto_weights(members, member_names(members), per_fold)
    return weights, {"auto_weights": info}


def resolve_offsets(
    choice: str, members: list[Path], weights: list[float] | None, extra: dict | None
) -> tuple[list[float] | None, dict | None]:
    """(per-class offsets or None, the report entries with ``offsets`` added): ``auto`` is fitted on the members'
    OOF soft vote, weighted as the eval vote is."""
    if choice != "auto":
        return None, extra
    info = auto_offsets(members, member_names(members), weights)
    return info["offsets"], {**(extra or {}), "offsets": info}


def default_out(members: list[Path], mode: str) -> Path:
    """Where the outputs go without --out: beside the runs (``runs/ensembles/submission_soft.csv``), not into
    whatever folder the command was typed in; relative to it when below it, as the printed line shows it."""
    folder = common_base(members) / "ensembles"
    relative = os.path.relpath(folder)
    return (folder if relative.startswith("..") else Path(relative)) / f"submission_{mode}.csv"


def main(args: argparse.Namespace) -> dict:
    runs_dir = Path(args.runs_dir)
    weights = parse_weights(args.weights)
    if weights == "auto" and args.mode != "soft":
        raise UserError(
            "--weights auto chooses soft-vote weights; "
            "use --mode soft, or give hard-vote weights by hand (--weights W ...)"
        )
    if args.offsets == "auto" and args.mode != "soft":
        raise UserError("--offsets auto shifts the soft vote's log-probabilities; use --mode soft, or drop --offsets")
    if args.oof:
        if args.answers:
            raise UserError("--answers does not apply to --oof (the validation labels are in valid_preds.csv)")
        members = find_members(args.runs, runs_dir, VALID_PREDS, "train it with train.py --fold K")
        out = Path(args.out) if args.out else default_out(members, args.mode)
        weights, extra = resolve_weights(weights, members, per_fold=True)
        extra = resolve_offsets(args.offsets, members, weights, extra)[1]
        return oof_ensemble(members, args.mode, weights, out.parent / f"{out.stem}_oof_report.json", extra)
    members = find_members(args.runs, runs_dir, EVAL_PROBS, "run inference.py --run {run}")
    out = Path(args.out) if args.out else default_out(members, args.mode)
    if not args.runs:
        print(f"members ({len(members)} run(s) with eval_probs.npy under {runs_dir}):")
        for name in member_names(members):
            print(f"  {name}")
    weights, extra = resolve_weights(weights, members, per_fold=False)
    offsets, extra = resolve_offsets(args.offsets, members, weights, extra)
    answers = Path(args.answers) if args.answers else None
    return ensemble_eval(members, args.mode, weights, out, answers, extra, offsets)


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
