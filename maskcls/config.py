"""train.py's arguments as data: the parser's building blocks, the checks of the parsed values, reloading a run's
arguments under the command line (--config, --resume), and config.json, the record of what a run was started with.

    parser = TrainParser(...)                     # parse_args(["--config", "runs/x/config.json", "--lr", "1e-4"])
    parser.add_argument(*flags("--batch-size"))   # also answers to the baseline's --batch_size
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from maskcls import age, augment, losses, models
from maskcls.checkpoint import resolve_resume
from maskcls.optim import OPTIMIZERS, SCHEDULERS
from maskcls.runs import NAME_FOLD, fold_dirs, is_cv_parent
from maskcls.utils import UserError, atomic_write_text, git_commit, json_text, read_json

# Arguments that describe how this invocation was started, not the experiment: never reloaded.
NOT_RELOADED = frozenset({"config", "resume", "stop_after"})


# --------------------------------------------------------------------------- parser building blocks
def fold_value(text: str) -> int | str | None:
    value = str(text).strip().lower()
    if value == "all":
        return "all"
    if value in ("none", "-1"):
        return None
    try:
        fold = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fold number, 'all' or 'none', got {text!r}") from None
    if fold < 0:
        raise argparse.ArgumentTypeError(f"fold must be >= 0, got {fold}")
    return fold


def flags(*names: str) -> list[str]:
    """`--batch-size` also answers to `--batch_size`: the baseline's spellings keep working."""
    out = []
    for name in names:
        out.append(name)
        if name.startswith("--") and "-" in name[2:]:
            out.append("--" + name[2:].replace("-", "_"))
    return out


class TrainParser(argparse.ArgumentParser):
    """Parses twice when --config/--resume is given: their args become the defaults, explicit flags still win."""

    def parse_known_args(self, args=None, namespace=None):
        first_ns = argparse.Namespace(**vars(namespace)) if namespace is not None else None
        first, extra = super().parse_known_args(args, first_ns)
        layered: dict[str, Any] = {}
        if getattr(first, "config", None):
            layered.update(reloadable_args(config_args(first.config), self, first.config))
        if getattr(first, "resume", None) and is_cv_parent(Path(first.resume)):
            layered.update(reloadable_args(cv_args(Path(first.resume)), self, first.resume))
        elif getattr(first, "resume", None):
            path, ckpt = resolve_resume(first.resume, quiet=True)
            layered.update(reloadable_args(ckpt.get("meta", {}).get("args", {}), self, path))
        if not layered:
            return first, extra
        self.set_defaults(**layered)
        parsed, extra = super().parse_known_args(args, namespace)
        named = getattr(first, "name", "") is not None  # the first pass has the parser's defaults: None = no --name
        if getattr(first, "config", None) and not getattr(first, "resume", None) and not named:
            parsed.name = rerun_name(layered, parsed)  # not the old run's name, which would become x_2
        return parsed, extra

    def error(self, message: str):
        # argparse would print the ~30-line usage first and bury the one line that matters.
        self.exit(2, f"error: {message}; see python {self.prog} --help\n")


# --------------------------------------------------------------------------- checking
def check_args(args: argparse.Namespace) -> None:
    """Every user-causable problem with the arguments, as one line, before any heavy work."""
    # Unknown names raise registry.UnknownNameError listing the valid ones (run_main prints one line).
    models.resolve_model_name(args.model)
    losses.CRITERIA.get(args.criterion)
    augment.recipe_of(vars(args), warn=True)  # and a bad option value is a UserError naming its flag
    OPTIMIZERS.get(args.optimizer)
    SCHEDULERS.get(args.scheduler)
    positive = {
        "--epochs": args.epochs,
        "--batch-size": args.batch_size,
        "--valid-batch-size": args.valid_batch_size,
        "--accum-steps": args.accum_steps,
        "--log-interval": args.log_interval,
        "--lr-decay-step": args.lr_decay_step,
    }
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if min(args.resize) < 8:
        raise UserError(f"--resize {args.resize[0]} {args.resize[1]} is too small; use at least 8 px (H W)")
    if args.lr <= 0:
        raise UserError(f"--lr must be > 0, got {args.lr}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    if not 0 <= args.cutmix <= 1:
        raise UserError(f"--cutmix is a probability, got {args.cutmix}; use 0..1")
    if args.cutmix_beta <= 0 or args.mixup < 0:
        raise UserError("--cutmix-beta must be > 0 and --mixup >= 0")
    if not 0 <= args.ema < 1:
        raise UserError(f"--ema is a decay in [0, 1), e.g. 0.999; got {args.ema}")
    if args.fold is not None:
        if args.folds < 2:
            raise UserError(f"--folds must be at least 2, got {args.folds}; or use --fold none --val-ratio R")
        if args.fold != "all" and args.fold >= args.folds:
            raise UserError(f"--fold {args.fold} does not exist with --folds {args.folds}; use 0..{args.folds - 1}")
    elif not 0 <= args.val_ratio < 1:
        raise UserError(f"--val-ratio must be in [0, 1) (0: train on every person), got {args.val_ratio}")
    elif args.val_ratio == 0 and args.patience:
        raise UserError(
            "--patience stops on valid F1, and --fold none trains on every person without validation; "
            "drop --patience or hold persons out with --val-ratio 0.2"
        )
    if args.resume and is_cv_parent(Path(args.resume)) != (args.fold == "all"):
        raise UserError(
            "--resume DIR of a `--fold all` run continues all its folds (no --fold), --resume DIR/fold<k> one fold"
        )
    if args.drop_ages is not None and args.drop_ages[0] > args.drop_ages[1]:
        raise UserError(f"--drop-ages LO HI needs LO <= HI, got {args.drop_ages[0]} {args.drop_ages[1]}")
    if any(w < 0 for w in args.head_weights):
        raise UserError(f"--head-weights must be >= 0, got {args.head_weights}")
    check_age_head(args)
    check_output_dir(args.output_dir, args.data_dir)


def check_age_head(args: argparse.Namespace) -> None:
    """--age-head years: a part of the multi head, with an old-age threshold inside its bins (18..60)."""
    if args.age_head == "groups":  # a reloaded config may carry the years head's options: a warning, not an error
        defaults = {"age_loss": age.DEFAULT_AGE_LOSS, "age_sigma": age.DEFAULT_AGE_SIGMA}
        idle = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k, v in defaults.items() if getattr(args, k) != v]
        if idle:
            print(f"warning: {', '.join(idle)} change(s) nothing without --age-head years", file=sys.stderr)
        return
    if args.head != "multi":
        raise UserError(f"--age-head {args.age_head} is a part of the multi head; add --head multi")
    if not 30 < args.age_old_threshold <= 60:
        raise UserError(
            f"--age-head years counts the old group from --age-old-threshold inside its ages 18..60; "
            f"got {args.age_old_threshold}, use 31..60"
        )
    if not args.age_sigma > 0:
        raise UserError(f"--age-sigma is a width in years, > 0 (e.g. 2); got {args.age_sigma}")


def check_output_dir(output_dir: str, data_dir: str) -> None:
    """Runs must not live among the photos: crop_faces.py would crop a run's PNGs (confusion matrix) as photos."""
    out = Path(output_dir).resolve()
    for split in ("train", "eval"):
        for tree in ("images", "crops"):
            folder = Path(data_dir).resolve() / split / tree
            if out == folder or folder in out.parents:
                raise UserError(
                    f"--output-dir {output_dir} is inside {folder}, whose pictures crop_faces.py and training read "
                    "as photos; put the runs outside the data folder's images/ and crops/, e.g. --output-dir runs"
                )


def criterion_options(criterion: str, given: dict[str, Any]) -> dict:
    """Keyword options for losses.build_loss from the parsed arguments' criterion flags (None = the loss's default).

    ``given``: the arguments (dest -> value), e.g. ``vars(args)``; the flags are those losses.py declares
    (losses.criterion_flags). A flag of another criterion is ignored with a warning rather than an error, so a
    reloaded config (--config of a focal run) can switch --criterion without clearing --focal-gamma.
    """
    canonical = losses.CRITERIA.canonical(criterion)
    options, ignored = {}, []
    for flag in losses.criterion_flags():
        value = given.get(flag.dest)
        if value is None:
            continue
        if flag.criterion == canonical:
            options[flag.option] = value
        else:
            ignored.append(flag.flag)
    if ignored:
        print(f"warning: {', '.join(ignored)} do(es) not apply to --criterion {criterion}; ignored", file=sys.stderr)
    return options


def default_run_name(model_name: str, criterion: str, fold: int | str | None, folds: int) -> str:
    display = model_name.removeprefix("timm:")
    return safe_name(f"{display}_{criterion}_{where_name(fold, folds)}")


def where_name(fold: int | str | None, folds: int) -> str:
    """What a default run name says of its validation: fold<k>, cv<folds> (--fold all) or holdout (--fold none)."""
    return "holdout" if fold is None else f"cv{folds}" if fold == "all" else f"fold{fold}"


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name)


# Arguments a rerun's name leaves out: where and how fast it runs, not what it is (its config.json has them all).
NOT_IN_NAME = NOT_RELOADED | {"name", "output_dir", "data_dir", "workers", "device", "log_interval", "valid_batch_size"}
NAME_TAG_MAX = 100  # characters of a rerun name's "what changed"; a longer one becomes a count and a digest


def rerun_name(saved: dict, args: argparse.Namespace) -> str:
    """The name of a --config rerun without --name: the saved run's name with the arguments the command line
    changed (deterministic, sorted), placed before its fold part so that a rerun's folds stay one model group:
    r18_fold0 + --lr 1e-3 -> r18_lr1e-3_fold0; + --fold 1 -> r18_fold1. A run saved with the default name gets
    the default name of the new arguments with the other changes. Nothing changed: the saved name (then _2)."""
    changes = {k: v for k, v in sorted(vars(args).items()) if k in saved and k not in NOT_IN_NAME and v != saved[k]}
    name = saved.get("name")
    if name is None:  # the default name says the model, criterion and fold itself
        model = models.MODELS.canonical(args.model) if args.model in models.MODELS else str(args.model)
        criterion = losses.CRITERIA.canonical(args.criterion) if args.criterion in losses.CRITERIA else args.criterion
        name = default_run_name(model, criterion, args.fold, args.folds)
        changes = {k: v for k, v in changes.items() if k not in ("model", "criterion", "fold")}
    found = NAME_FOLD.search(str(name))
    stem, fold_part = (name[: found.start()], found["sep"] + found["fold"]) if found else (str(name), "")
    if fold_part and "fold" in changes:  # r18_fold0 validated on another fold: r18_fold1 (r18_cv5 for all)
        fold_part = found["sep"] + where_name(changes.pop("fold"), args.folds)
    tag = "_".join(_name_part(k, v) for k, v in changes.items())
    if len(tag) > NAME_TAG_MAX:
        tag = f"{len(changes)}changes-{hashlib.sha1(tag.encode()).hexdigest()[:6]}"
    return safe_name("_".join(p for p in (stem, tag) if p) + fold_part)


def _name_part(key: str, value: Any) -> str:
    """One changed argument in a run name: lr1e-3, resize48x36, criterion-focal, no-pretrained, cache."""
    key = key.replace("_", "-")
    if isinstance(value, bool) or value is None:
        return key if value else f"no-{key}"
    if isinstance(value, list):
        return key + "x".join(_compact(v) for v in value)
    if isinstance(value, str):
        return f"{key}-{Path(value).stem if '/' in value else value}"
    return key + _compact(value)


def _compact(value: Any) -> str:
    """A number as short as it reads exactly: 0.001 -> 1e-3, 3e-4 -> 3e-4, 0.5 -> 0.5, 20 -> 20."""
    if not isinstance(value, float):
        return str(value)
    plain = repr(value).removesuffix(".0")
    mantissa, exponent = f"{value:e}".split("e")
    sci = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return sci if len(sci) < len(plain) and float(sci) == value else plain


# --------------------------------------------------------------------------- reloading
def config_args(path: str) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a train.py config.json (expected a JSON object with 'args')")
    args = data.get("args", data)
    if not isinstance(args, dict):
        raise UserError(f"{path}: 'args' is not a JSON object; point --config at a run's config.json")
    return args


def reloadable_args(saved: dict, parser: argparse.ArgumentParser, source) -> dict:
    known = {a.dest for a in parser._actions}
    unknown = sorted(k for k in saved if k not in known)
    if unknown:
        print(f"warning: {source}: ignoring unknown argument(s) {', '.join(unknown)}", file=sys.stderr)
    return {k: v for k, v in saved.items() if k in known and k not in NOT_RELOADED}


def cv_args(parent: Path) -> dict:
    """The arguments of a `--fold all` run: those its first checkpointed fold saved (as a single run's --resume
    reads them), else (no epoch finished yet) those of its first fold's config.json."""
    folds = fold_dirs(parent)
    for run in folds:
        if (run / "last.pt").exists() or (run / "best.pt").exists():
            _, ckpt = resolve_resume(str(run), quiet=True)
            return {**ckpt.get("meta", {}).get("args", {}), "fold": "all"}
    for run in folds:
        if (run / "config.json").is_file():
            return {**config_args(str(run / "config.json")), "fold": "all"}
    raise UserError(f"{parent} has fold directories but no config.json in them; start a new run")


# --------------------------------------------------------------------------- config.json
def json_args(args: argparse.Namespace) -> dict:
    """The resolved arguments as JSON data (config.json, checkpoints); the hidden test flag is left out."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "stop_after"}


def hparam_values(args: dict) -> dict:
    """The arguments as TensorBoard hparams (scalars and strings; lists joined, None as "none")."""
    out = {}
    for k, v in args.items():
        if k in NOT_RELOADED or k in ("output_dir", "name"):
            continue
        if isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif v is None:
            out[k] = "none"
        elif isinstance(v, list):
            out[k] = " ".join(str(x) for x in v)
    return out


def versions() -> dict:
    import timm
    import torch
    import torchvision

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
    }


def write_config(run_dir: Path, args: dict, image_dir: Path, start_time: str, world: int, recorded_sha1=None) -> str:
    """Write config.json: a new run's record, or (on resume) train.py's own with this session appended.
    Returns the sha1 of the text written, which summary.json keeps as ``recorded_sha1`` for the next resume.

    A config.json changed since train.py wrote it (``recorded_sha1`` differs) or that is not valid JSON was
    edited by hand: it is moved aside to config.edited.json (never overwritten, never lost), with a warning that
    --resume takes the run's arguments from its checkpoint, and a new config.json is written.
    """
    path = run_dir / "config.json"
    command = [sys.argv[0], *sys.argv[1:]]
    # A fresh run's directory is new, except a `--fold all` fold restarted by --resume before its first epoch.
    config = own_config(path, recorded_sha1, run_dir) if path.is_file() else None
    if config is not None:
        config["args"] = args
        config.setdefault("resumes", []).append({"time": start_time, "command": command})
    else:
        config = {
            "args": args,
            "versions": versions(),
            "git_commit": git_commit(),
            "start_time": start_time,
            "image_dir": image_dir.name,
            "image_dir_path": str(image_dir),
            "command": command,
            "run_dir": str(run_dir),
            "world_size": world,
        }
    text = json_text(config)
    atomic_write_text(path, text)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def own_config(path: Path, recorded_sha1: str | None, run_dir: Path) -> dict | None:
    """The config.json train.py wrote, or None after moving a hand-edited one aside (with a one-line warning)."""
    data = path.read_bytes()
    try:
        config = json.loads(data)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        config = None
    changed = recorded_sha1 is not None and hashlib.sha1(data).hexdigest() != recorded_sha1
    if isinstance(config, dict) and not changed:
        return config
    kept = path.with_name("config.edited.json")
    n = 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"config.edited_{n}.json")
    os.replace(path, kept)
    invalid = "" if isinstance(config, dict) else " (and is not a valid JSON object)"
    print(
        f"warning: {path} was edited after train.py wrote it{invalid}; --resume takes the run's arguments from its "
        f"checkpoint, not config.json (to change one, pass it: python train.py --resume {run_dir} --epochs N), so "
        f"the edit is not used: your file is kept as {kept} and a new config.json is written",
        file=sys.stderr,
    )
    return None
