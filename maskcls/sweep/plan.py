"""The plan of a sweep: the ``--vary`` language, the variants, the search space and the manifest (sweep.json).

    parser = train_parser()
    base = load_base(parser, "runs/base/config.json", [])
    variants, notes = make_variants(parser, base, ["lr=1e-3,3e-4", "criterion=focal"])

Every ``--vary`` value is parsed and checked by train.py's own parser and checks, so a bad one is refused in
one line before anything runs. A variant differs from the base in exactly one argument; every variant is
trained on the same folds and seeds, so each comparison is paired. No optuna and no torch here.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskcls import models as model
from maskcls.registry import UnknownNameError
from maskcls.utils import UserError

# Flags the sweep sets itself for every run, or that would make a run another experiment altogether.
RESERVED = {
    "fold": "the sweep sets it per run: use --folds",
    "seed": "the sweep sets it per run: use --repeats or --seeds",
    "output_dir": "the runs go into the sweep directory: use --output-dir of sweep.py",
    "name": "the sweep names its runs <variant>_f<fold>_s<seed>",
    "config": "give the base with --base",
    "resume": "the sweep resumes its own runs",
    "stop_after": "a test-only flag",
    "help": "not an argument",
}
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
PLAN_VERSION = 1
BASE_CHOICE = "(base)"
# The sweep directory's own files: the plan as run (verdict.py reads it) and the base every run starts from.
MANIFEST = "sweep.json"
BASE_CONFIG = "base_config.json"


# --------------------------------------------------------------------------- the variants
@dataclass
class Variant:
    name: str
    dest: str | None = None  # the train.py argument it changes (None: the base)
    value: Any = None
    tokens: list[str] = field(default_factory=list)  # appended to the base's train.py command line
    change: str = ""  # "lr=0.001", shown in the verdict


def train_parser() -> argparse.ArgumentParser:
    # Its registries (models, losses, optimisers: ~0.1 s of sweep.py's ~0.7 s --help) load once a plan is made.
    from maskcls.train_args import get_args_parser

    return get_args_parser()


def find_action(parser: argparse.ArgumentParser, key: str) -> argparse.Action:
    """The train.py argument behind ``key`` (``lr``, ``--lr``, ``age-old-threshold`` or ``age_old_threshold``)."""
    options = parser._option_string_actions
    flag = "--" + key.strip().lstrip("-")
    for candidate in (flag, flag.replace("_", "-")):
        if candidate in options:
            action = options[candidate]
            if action.dest in RESERVED:
                raise UserError(f"--vary {key}: {candidate} cannot be varied ({RESERVED[action.dest]})")
            return action
    close = difflib.get_close_matches(flag.replace("_", "-"), [o for o in options if o.startswith("--")], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserError(f"--vary {key}=...: train.py has no flag {flag}{hint}; see python train.py --help")


def negated_text(action: argparse.Action, key: str, text: str | None) -> str | None:
    """``--vary no-cache`` means cache=false: flip the value of a --no-<flag> spelling."""
    if not isinstance(action, argparse.BooleanOptionalAction) or not key.strip().lstrip("-").startswith("no"):
        return text
    if ("--" + key.strip().lstrip("-")).replace("_", "-") not in action.option_strings[1:]:
        return text  # a flag whose own name starts with "no"
    word = (text or "true").strip().lower()
    return "false" if word in TRUE_WORDS else "true" if word in FALSE_WORDS else text


def change_tokens(action: argparse.Action, text: str | None) -> list[str]:
    """The train.py command-line tokens that set ``action`` to ``text``."""
    flag = next(o for o in action.option_strings if o.startswith("--"))
    if isinstance(action, argparse.BooleanOptionalAction):
        word = (text or "true").strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise UserError(f"--vary {flag[2:]}={text}: expected true or false")
        return [flag] if word in TRUE_WORDS else ["--no-" + flag[2:]]
    if action.nargs == 0:  # store_const flags such as --no-label-fixes
        if text is not None and text.strip().lower() not in TRUE_WORDS:
            raise UserError(f"--vary {flag[2:]}: a switch takes no value (write --vary {flag[2:]})")
        return [flag]
    if text is None or not text.strip():
        raise UserError(f"--vary {flag[2:]}: give values, e.g. --vary {flag[2:]}=A,B")
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        return [flag, *re.split(r"[x\s]+", text.strip())]  # --resize 64x48 or "64 48"
    return [flag, text.strip()]


def parse_change(parser: argparse.ArgumentParser, action: argparse.Action, text: str | None) -> tuple[Any, list]:
    """(value, tokens) of one --vary value, parsed by train.py's own parser: a bad value is one line."""
    tokens = change_tokens(action, text)
    try:
        with contextlib.redirect_stderr(_Captured()) as captured:
            parsed = vars(parser.parse_args(tokens))
    except SystemExit:
        message = str(captured).strip().removeprefix("error: ").split("; see python")[0]
        raise UserError(f"--vary {' '.join(tokens).lstrip('-')}: {message}") from None
    defaults = vars(parser.parse_args([]))
    changed = sorted(k for k in parsed if parsed[k] != defaults[k] and k != action.dest)
    if changed:
        raise UserError(f"--vary {' '.join(tokens)} also changes {', '.join(changed)}; a variant changes one argument")
    return parsed[action.dest], tokens


class _Captured(list):
    def write(self, text: str) -> None:
        self.append(text)

    def flush(self) -> None:
        pass

    def __str__(self) -> str:
        return "".join(self)


def canonical(dest: str, value: Any) -> Any:
    """Compare values as train.py will use them: registered names by their canonical spelling."""
    if isinstance(value, str) and dest in ("criterion", "model"):
        try:
            if dest == "criterion":
                from maskcls import losses as loss

                return loss.CRITERIA.canonical(value)

            return model.resolve_model_name(value)
        except UnknownNameError:
            return value
    if isinstance(value, str) and dest in ("optimizer", "scheduler"):
        return value.lower()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def split_vary(spec: str) -> tuple[str, list[str | None]]:
    """``lr=1e-3,3e-4`` -> (lr, [1e-3, 3e-4]); ``no-label-fixes`` -> (no-label-fixes, [None])."""
    key, sep, values = spec.partition("=")
    if not key.strip():
        raise UserError(f"--vary {spec!r}: expected KEY=VALUE[,VALUE...], e.g. --vary lr=1e-3,3e-4")
    if not sep:
        return key.strip(), [None]
    parts = [v.strip() for v in values.split(",")]
    if "=" in values:
        raise UserError(
            f"--vary {spec}: a variant changes exactly one argument against the base; give each change as "
            "its own --vary (e.g. --vary lr=1e-3 --vary epochs=20)"
        )
    if not all(parts):
        raise UserError(f"--vary {spec}: an empty value; write KEY=A,B")
    return key.strip(), parts


def variant_name(flag: str, tokens: list[str]) -> str:
    text = "-".join(tokens[1:]) if len(tokens) > 1 else tokens[0].lstrip("-")
    name = f"{flag}-{text}" if len(tokens) > 1 else text
    return re.sub(r"[^A-Za-z0-9.+-]", "_", name)


def make_variants(parser: argparse.ArgumentParser, base: dict, specs: list[str]) -> tuple[list[Variant], list[str]]:
    """The base and one variant per distinct value that differs from the base; notes on what was dropped."""
    variants, notes, seen = [Variant("base")], [], set()
    for spec in specs:
        key, values = split_vary(spec)
        action = find_action(parser, key)
        for text in values:
            value, tokens = parse_change(parser, action, negated_text(action, key, text))
            shown = f"{action.dest}={_show(value)}"
            if canonical(action.dest, value) == canonical(action.dest, base.get(action.dest)):
                notes.append(f"note: {shown} is the base's own value; no variant for it")
                continue
            if (action.dest, json.dumps(canonical(action.dest, value))) in seen:
                notes.append(f"note: {shown} given twice; planned once")
                continue
            seen.add((action.dest, json.dumps(canonical(action.dest, value))))
            name = variant_name(action.option_strings[0].lstrip("-"), tokens)
            taken = {v.name for v in variants}
            name = next(n for n in (name, *(f"{name}_{k}" for k in range(2, 99))) if n not in taken)
            variants.append(Variant(name, action.dest, value, tokens, shown))
    return variants, notes


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def check_variant(base: dict, variant: Variant, folds: list[int], seeds: list[int]) -> None:
    """train.py's own argument checks on the variant's resolved arguments, before anything runs."""
    from maskcls.config import check_args as check  # train.py's own checks (torch-free)

    args = {**base, "resume": None, "config": None, "seed": seeds[0]}
    if variant.dest:
        args[variant.dest] = variant.value
    for fold in folds:
        try:
            check(argparse.Namespace(**{**args, "fold": fold}))
        except UserError as e:
            where = f"variant {variant.change}" if variant.dest else "the base"
            raise UserError(f"{where} (fold {fold}): {e}") from None
        except ValueError as e:  # registry.UnknownNameError: unknown model/criterion/optimizer/scheduler
            raise UserError(f"{variant.change or 'the base'}: {e}") from None


def load_base(parser: argparse.ArgumentParser, base: str | None, flags: list[str]) -> dict:
    """train.py's resolved arguments of the base: --base's config.json (or run dir), then the flags after --."""
    argv = list(flags)
    if base:
        path = Path(base)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"--base {base}: no such config.json; point it at a run's config.json or run directory")
        argv = ["--config", str(path), *argv]
    try:
        with contextlib.redirect_stderr(_Captured()) as captured:
            args = parser.parse_args(argv)
    except SystemExit:
        raise UserError(f"the base's train.py flags: {str(captured).strip().removeprefix('error: ')}") from None
    if str(captured).strip():
        print(str(captured).strip(), file=sys.stderr)  # e.g. train.py's warning about unknown config keys
    dropped = ("config", "resume", "stop_after")  # fold, seed, name, output_dir stay: the command overrides them
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in dropped}


# --------------------------------------------------------------------------- the manifest
def build_manifest(args: argparse.Namespace, flags: list[str]) -> tuple[dict, list[str]]:
    """The sweep's plan from --base/--vary/--folds/--seeds, every value checked by train.py's parser."""
    parser = train_parser()
    base = load_base(parser, args.base, flags)
    if not args.vary:
        raise UserError("nothing to vary: give one or more --vary KEY=VALUE[,VALUE...] (e.g. --vary lr=1e-3,3e-4)")
    folds = args.folds if args.folds is not None else [base["fold"] if isinstance(base.get("fold"), int) else 0]
    seeds = args.seeds if args.seeds is not None else [int(base["seed"]) + k for k in range(args.repeats)]
    if len(set(folds)) != len(folds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--folds {folds} / seeds {seeds}: a fold or seed is listed twice")
    notes: list[str] = []
    space = None
    if args.search:
        space, checks = make_space(parser, base, args.vary)
        variants = [Variant("base")]
    else:
        variants, notes = make_variants(parser, base, args.vary)
        checks = variants
        if len(variants) == 1:
            raise UserError("every --vary value is the base's own; nothing to compare (see the notes above)")
    for variant in [Variant("base"), *checks]:
        check_variant(base, variant, folds, seeds)
    train_csv = Path(base["data_dir"]) / "train" / "train.csv"
    if not train_csv.is_file():
        raise UserError(f"the base's --data-dir {base['data_dir']} has no train/train.csv; fix it in the base")
    manifest = {
        "version": PLAN_VERSION,
        "mode": "search" if args.search else "grid",
        "base_args": base,
        "variants": [vars(v) for v in variants],
        "folds": list(folds),
        "seeds": list(seeds),
        "space": space,
        "trials": args.trials if args.search else None,
    }
    manifest["fingerprint"] = plan_fingerprint(manifest)
    return manifest, notes


def plan_fingerprint(manifest: dict) -> str:
    keys = ("mode", "base_args", "folds", "seeds", "space")
    core = {k: manifest.get(k) for k in keys}
    core["variants"] = [(v["name"], v["dest"], v["value"]) for v in manifest["variants"]]
    return hashlib.sha1(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_name(variant: str, fold: int, seed: int) -> str:
    """The run directory of one planned run inside the sweep directory."""
    return f"{variant}_f{fold}_s{seed}"


def planned_runs(manifest: dict) -> list[dict]:
    """Grid mode's trials, ordered so a partial sweep has complete pairs: seed, then fold, then variant."""
    return [
        {"variant": v["name"], "fold": f, "seed": s, "run": run_name(v["name"], f, s)}
        for s in manifest["seeds"]
        for f in manifest["folds"]
        for v in manifest["variants"]
    ]


def default_study_name(base: str | None) -> str:
    if not base:
        return "sweep"
    path = Path(base).resolve()
    return f"{(path if path.is_dir() else path.parent).name}_sweep"


def plan_lines(manifest: dict, sweep_dir: Path, train_cmd: list[str]) -> list[str]:
    folds, seeds = manifest["folds"], manifest["seeds"]
    lines = []
    if manifest["mode"] == "grid":
        n = len(manifest["variants"])
        runs = n * len(folds) * len(seeds)
        lines.append(f"plan: {n} variants x {len(folds)} folds x {len(seeds)} seeds = {runs} runs")
        for v in manifest["variants"]:
            lines.append(f"  {v['name']:<28} {v['change'] or '(the base)'}")
    else:
        lines.append(f"plan: the base + {manifest['trials']} TPE trials, each on folds {folds} x seeds {seeds}")
        for dest, s in manifest["space"].items():
            log = " log" if s.get("log") else ""
            shown = s["choices"] if s["kind"] == "categorical" else f"{s['low']}..{s['high']}{log}"
            lines.append(f"  {dest}: {shown}")
    first = manifest["variants"][-1]
    example = [*train_cmd, "--config", str(sweep_dir / BASE_CONFIG), *first["tokens"]]
    example += ["--fold", str(folds[0]), "--seed", str(seeds[0]), "--output-dir", str(sweep_dir)]
    lines.append("each run: " + " ".join([*example, "--name", run_name(first["name"], folds[0], seeds[0])]))
    return lines


# --------------------------------------------------------------------------- --search
def make_space(parser: argparse.ArgumentParser, base: dict, specs: list[str]) -> tuple[dict[str, dict], list]:
    """--search: each --vary as an Optuna distribution (``lo:hi[:log]`` for numbers, ``a,b,c`` choices), and
    one single-change Variant per range end / choice for train.py's checks."""
    space: dict[str, dict] = {}
    checks: list[Variant] = []
    for spec in specs:
        key, values = split_vary(spec)
        action = find_action(parser, key)
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if len(values) == 1 and values[0] and ":" in values[0]:
            low, high, *rest = values[0].split(":")
            if rest not in ([], ["log"]):
                raise UserError(f"--vary {spec}: a range is LOW:HIGH or LOW:HIGH:log")
            lo, hi = parse_change(parser, action, low)[0], parse_change(parser, action, high)[0]
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi)) or lo >= hi:
                raise UserError(f"--vary {spec}: a range needs two numbers, LOW < HIGH")
            if rest and lo <= 0:
                raise UserError(f"--vary {spec}: a log range needs LOW > 0")
            kind = "int" if isinstance(lo, int) and isinstance(hi, int) else "float"
            space[action.dest] = {"kind": kind, "low": lo, "high": hi, "log": bool(rest), "flag": flag}
            checks += [Variant(f"{action.dest}={x}", action.dest, x, [], f"{action.dest}={x}") for x in (lo, hi)]
        else:
            # "(base)" adds no token, so a run keeps the base config's value, whatever it is (None included).
            options: dict[str, list[str]] = {BASE_CHOICE: []}
            for v in values:
                value, tokens = parse_change(parser, action, negated_text(action, key, v))
                if canonical(action.dest, value) != canonical(action.dest, base.get(action.dest)):
                    options.setdefault(_choice_text(tokens), tokens)
                    checks.append(Variant(f"{action.dest}={v}", action.dest, value, [], f"{action.dest}={v}"))
            space[action.dest] = {"kind": "categorical", "choices": list(options), "tokens": options, "flag": flag}
    return space, checks


def _choice_text(tokens: list[str]) -> str:
    return " ".join(tokens[1:]) if len(tokens) > 1 else tokens[0]


def search_variant(space: dict[str, dict], name: str, params: dict) -> Variant:
    """A TPE trial's parameters as train.py tokens (every searched flag) and a readable change."""
    tokens, shown = [], []
    for dest, s in space.items():
        value = params[dest]
        if s["kind"] == "categorical":
            tokens += s["tokens"][value]
            shown.append(f"{dest}={value}")
        else:
            tokens += [s["flag"], repr(value) if s["kind"] == "float" else str(value)]
            shown.append(f"{dest}={value:.4g}" if s["kind"] == "float" else f"{dest}={value}")
    return Variant(name, None, None, tokens, ", ".join(shown))


def base_params(space: dict[str, dict], base: dict) -> dict:
    """The base trial's values of the searched arguments (the base's own)."""
    return {dest: BASE_CHOICE if s["kind"] == "categorical" else base.get(dest) for dest, s in space.items()}
