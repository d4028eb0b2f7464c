"""python bench/identity.py --work /tmp/identity_before --out /tmp/identity_before.json

Proves that a refactor changed no behaviour, byte for byte: runs the whole workflow on a tiny synthetic dataset
through the root scripts' command lines only (synthetic_data.py, dataset.py, crop_faces.py, train.py,
inference.py, ensemble.py, verdict.py; each a subprocess of this Python, so it works whatever the layout of the
modules behind them), then writes the sha256 of every artefact they produced to ``--out``. Run it before and after
the refactor and compare:

    python bench/identity.py --compare /tmp/identity_before.json bench/out/identity.json
    python bench/identity.py --compare A.json B.json --explain WORK_A WORK_B   # what each differing json/csv adds

Everything runs on the CPU, one thread (OMP_NUM_THREADS=1), with fixed seeds, from inside ``--work`` with relative
paths. What is hashed:

- ``log.csv``: the file re-written without its timing columns (images_per_s, seconds); every loss, accuracy,
  F1 and lr column of every epoch is kept.
- ``*.npy``, ``valid_preds.csv``, submissions and the other CSV/PNG files: the whole file.
- JSON files (config.json, summary.json, eval_meta.json, ensemble reports, synthetic.json): the parsed document,
  key order kept, without the keys that hold times, speeds, paths, hosts, versions or git commits (recursively:
  ``VOLATILE_KEYS``); a remaining string holding the work or repo folder has it replaced by <work> / <repo>.
- the image trees (data/*/images, data/*/crops): every file's path and sha256.
- verdict.md and verdict.py's output: the text without ``wrote ...`` lines.

Checkpoints (*.pt: torch.save names the archive after its temporary file) and TensorBoard events (wall times,
host name) are not compared; their content is compared through eval_probs.npy, valid_preds.csv and log.csv.

The runs: fold 0 plain (3 epochs); fold 1 with MixUp, EMA, the weighted sampler, focal loss, 2 accumulation
steps and gradient clipping; fold 2 with --drop-ages 57 59, --age-old-threshold 58, the step schedule and SGD;
and a fourth, fold 0 again with the multi head, CutMix and --cache, so that ``ensemble.py --weights auto`` has two
model groups sharing validation rows (ref, multi) and verdict.py a (base, variant) pair to judge. verdict.py needs
a sweep directory: the smallest valid one is built by hand (sweep.json and links to the two fold-0 runs).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = ".identity_work"  # a --work folder this script made (and may clear)

TRAIN_COMMON = shlex.split(
    "--data-dir data --resize 48 36 --model timm:resnet10t --no-pretrained --workers 0 --amp off --folds 5 "
    "--split-seed 42 --seed 42 --batch-size 16 --lr 0.003 --device cpu"
)
RUNS = {  # run dir (under runs/) -> its train.py flags besides TRAIN_COMMON
    "ref/fold0": "--fold 0 --epochs 3",
    "ref/fold1": "--fold 1 --epochs 2 --mixup 0.4 --ema 0.9 --sampler weighted --criterion focal --accum-steps 2 "
    "--clip-grad 1.0",
    "ref/fold2": "--fold 2 --epochs 2 --drop-ages 57 59 --age-old-threshold 58 --scheduler step --lr-decay-step 1 "
    "--gamma 0.5 --optimizer sgd --lr 0.01",
    "multi/fold0": "--fold 0 --epochs 2 --head multi --cutmix 0.5 --cache",
}
ANSWERS = ["--answers", "data/eval/answers.csv"]
ENSEMBLES = {  # --out (under ens/) -> ensemble.py flags
    "hard.csv": ["--mode", "hard", *ANSWERS],
    "soft.csv": ["--mode", "soft", *ANSWERS],
    "soft_oof.csv": ["--mode", "soft", "--oof"],
    "auto.csv": ["--mode", "soft", "--weights", "auto", *ANSWERS],
}
SWEEP = {  # verdict.py's input: sweep.json and its runs (links to the fold-0 runs)
    "study": "identity",
    "folds": [0],
    "seeds": [42],
    "variants": [{"name": "base", "change": None}, {"name": "multi", "change": "head=multi, cutmix=0.5, cache"}],
}
SWEEP_LINKS = {"base_f0_s42": "../runs/ref/fold0", "multi_f0_s42": "../runs/multi/fold0"}

VOLATILE_KEYS = frozenset(
    {
        # times, dates and speeds
        "time", "start_time", "end_time", "duration_s", "seconds", "elapsed_s", "startup", "images_per_s",
        "train_images_per_s", "images_per_cpu_s", "resumes",
        # paths (the work folder, the repo, a temporary file)
        "command", "run_dir", "image_dir_path", "checkpoint", "submission", "probs", "data_dir", "output_dir",
        "config", "resume", "label_fixes", "sweep_dir", "path",
        # hosts, versions, commits, and config.json's sha1 (its text holds times and versions)
        "versions", "git_commit", "hostname", "host", "storage", "config_sha1",
    }
)  # fmt: skip
TIMING_COLUMN = re.compile(r"per_s$|_s$|(^|_)(seconds|time|date|duration|elapsed|wall)(_|$)")
NOT_COMPARED = {  # file name pattern -> why
    re.compile(r"\.pt$"): "checkpoint (torch.save names the archive after its temporary file)",
    re.compile(r"^events\.out\.tfevents\."): "TensorBoard events (wall times, host name)",
}
TREES = re.compile(r"^data/(train|eval)/(images|crops)$")
INPUTS = {MARKER, "sweep/sweep.json"}  # written by this script, not by the project


# --------------------------------------------------------------------------- the workflow
def steps() -> list[tuple[str, list[str]]]:
    """(name, script argv) of every command, in order; paths are relative to the work folder."""
    out = [
        ("synthetic_data", ["synthetic_data.py", "--out", "data", "--seed", "0", "--train-persons", "40",
                            "--eval-persons", "20", "--workers", "1"]),
        ("dataset", ["dataset.py", "--data-dir", "data", "--folds", "5", "--seed", "42"]),
        ("crop_faces", ["crop_faces.py", "--data-dir", "data", "--device", "cpu"]),
    ]  # fmt: skip
    for run, flags in RUNS.items():
        parent, name = run.split("/")
        out.append((f"train {run}", ["train.py", *TRAIN_COMMON, *shlex.split(flags), "--output-dir", f"runs/{parent}",
                                     "--name", name]))  # fmt: skip
    for run in RUNS:
        out.append((f"inference {run}", ["inference.py", "--run", f"runs/{run}", "--tta", "flip", "--amp", "off",
                                         "--workers", "0", "--device", "cpu", *ANSWERS]))  # fmt: skip
    for name, flags in ENSEMBLES.items():
        out.append((f"ensemble {name}", ["ensemble.py", *flags, "--runs-dir", "runs", "--out", f"ens/{name}"]))
    out.append(("verdict", ["verdict.py", "sweep"]))
    return out


def child_env() -> dict[str, str]:
    """One CPU thread, no GPU, a fixed hash seed."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONDONTWRITEBYTECODE="1")
    return env


def prepare_work(work: Path, force: bool) -> None:
    """An empty work folder with the marker; an earlier one of this script is cleared with --force."""
    if work.exists() and any(work.iterdir()):
        if not (work / MARKER).is_file():
            sys.exit(f"error: --work {work} is not empty and was not made by bench/identity.py; pick another folder")
        if not force:
            sys.exit(f"error: --work {work} holds an earlier run; pass --force to clear it, or pick another folder")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("bench/identity.py work folder\n")
    (work / "logs").mkdir()


def build_sweep(work: Path) -> None:
    """verdict.py's smallest valid input: sweep.json and the runs it names (relative links)."""
    sweep = work / "sweep"
    sweep.mkdir(exist_ok=True)
    (sweep / "sweep.json").write_text(json.dumps(SWEEP, indent=2) + "\n")
    for link, target in SWEEP_LINKS.items():
        os.symlink(target, sweep / link)


def run_step(name: str, argv: list[str], work: Path, env: dict) -> float:
    """Run one script inside ``work`` (output in logs/<step>.out/.err); seconds taken, or exit on failure."""
    log = work / "logs" / re.sub(r"[^\w.-]+", "_", name)
    cmd = [sys.executable, str(REPO / argv[0]), *argv[1:]]
    print(f"$ python {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    with open(f"{log}.out", "wb") as out, open(f"{log}.err", "wb") as err:
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=out, stderr=err, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = Path(f"{log}.err").read_text(errors="replace").splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        sys.exit(f"error: step {name!r} exited {proc.returncode} after {seconds:.1f} s (logs: {log}.out/.err)")
    return seconds


def run_workflow(work: Path) -> dict[str, float]:
    """Every step in order; {step: seconds}."""
    env, timings = child_env(), {}
    for name, argv in steps():
        if name == "verdict":
            build_sweep(work)
        timings[name] = run_step(name, argv, work, env)
    return timings


# --------------------------------------------------------------------------- hashing
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_file(path: Path) -> tuple[str, str]:
    data = path.read_bytes()
    return sha256(data), f"whole file, {len(data)} bytes"


def hash_log_csv(path: Path) -> tuple[str, str]:
    """log.csv without its timing columns; refuses to drop a loss/acc/f1 column."""
    raw = path.read_bytes()
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
    header = rows[0]
    keep = [i for i, c in enumerate(header) if not TIMING_COLUMN.search(c)]
    dropped = [c for i, c in enumerate(header) if i not in keep]
    if any(re.search(r"loss|acc|f1", c) for c in dropped):
        raise RuntimeError(f"{path}: a metric column would be dropped as timing ({dropped})")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n" if b"\r\n" in raw else "\n")
    writer.writerows([row[i] for i in keep] for row in rows)
    note = f"{len(rows) - 1} epochs, {len(keep)}/{len(header)} columns (without {', '.join(dropped) or 'none'})"
    return sha256(buf.getvalue().encode("utf-8")), note


def strip_volatile(value, places: dict[str, str], dropped: set[str]):
    """``value`` without VOLATILE_KEYS (recursively), the work/repo folders in strings replaced by placeholders."""
    if isinstance(value, dict):
        dropped.update(k for k in value if k in VOLATILE_KEYS)
        return {k: strip_volatile(v, places, dropped) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [strip_volatile(v, places, dropped) for v in value]
    if isinstance(value, str):
        for folder, placeholder in places.items():
            value = value.replace(folder, placeholder)
    return value


def hash_json(path: Path, places: dict[str, str]) -> tuple[str, str]:
    dropped: set[str] = set()
    data = strip_volatile(json.loads(path.read_text(encoding="utf-8")), places, dropped)
    text = json.dumps(data, ensure_ascii=False, indent=1)  # key order kept: it is part of the file
    return sha256(text.encode("utf-8")), "json" + (f" without {', '.join(sorted(dropped))}" if dropped else "")


def stable_text(text: str, places: dict[str, str]) -> str:
    """Text without the lines that name a written file's path (``wrote ...``) or the work/repo folders."""
    lines = [ln for ln in text.splitlines(keepends=True) if not ln.startswith("wrote ")]
    return "".join(ln for ln in lines if not any(folder in ln for folder in places))


def hash_text(path: Path, places: dict[str, str]) -> tuple[str, str]:
    text = path.read_text(encoding="utf-8")
    kept = stable_text(text, places)
    removed = len(text.splitlines()) - len(kept.splitlines())
    return sha256(kept.encode("utf-8")), f"text, {len(kept.splitlines())} lines ({removed} volatile removed)"


def hash_tree(folder: Path) -> tuple[str, str]:
    """Every file's relative path and sha256, sorted (modes and times left out)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    lines = [f"{p.relative_to(folder).as_posix()}\t{sha256(p.read_bytes())}\n" for p in files]
    size = sum(p.stat().st_size for p in files)
    return sha256("".join(lines).encode("utf-8")), f"tree of {len(files)} files, {size / 1e6:.2f} MB"


def hash_one(path: Path, places: dict[str, str]) -> tuple[str, str] | None:
    """(sha256, note) of one produced file by its kind, or None when it is not compared."""
    name = path.name
    if any(pattern.search(name) for pattern in NOT_COMPARED):
        return None
    if name == "log.csv":
        return hash_log_csv(path)
    if name.endswith(".json"):
        return hash_json(path, places)
    if name.endswith((".md", ".txt")):
        return hash_text(path, places)
    return hash_file(path)


def collect(work: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """({artefact: sha256}, {artefact: note}, {file not compared: why}) of everything the workflow wrote."""
    places = {str(work.resolve()): "<work>", str(work): "<work>", str(REPO): "<repo>"}
    hashes, notes, skipped = {}, {}, {}
    for folder, dirs, files in os.walk(work):
        rel_dir = Path(folder).relative_to(work).as_posix()
        dirs.sort()
        if rel_dir == "logs":
            dirs.clear()
            continue
        for d in list(dirs):
            rel = f"{rel_dir}/{d}" if rel_dir != "." else d
            if TREES.match(rel):
                dirs.remove(d)
                hashes[rel + "/"], notes[rel + "/"] = hash_tree(work / rel)
        for f in sorted(files):
            rel = f"{rel_dir}/{f}" if rel_dir != "." else f
            if rel in INPUTS:
                continue
            result = hash_one(work / rel, places)
            if result is None:
                skipped[rel] = next(why for pattern, why in NOT_COMPARED.items() if pattern.search(f))
                continue
            hashes[rel], notes[rel] = result
    verdict_out = work / "logs" / "verdict.out"
    hashes["verdict.py stdout"], notes["verdict.py stdout"] = hash_text(verdict_out, places)
    return hashes, notes, skipped


# --------------------------------------------------------------------------- report and comparison
def git_state() -> str:
    def git(*argv: str) -> str:
        proc = subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else "?"

    changed = [ln for ln in git("status", "--porcelain").splitlines() if ln.strip()]
    return git("rev-parse", "HEAD") + (f" + {len(changed)} changed files" if changed else "")


def compare(path_a: Path, path_b: Path) -> int:
    """Print every artefact as same / DIFFERENT / missing; 1 if any is not the same."""
    reports = [json.loads(Path(p).read_text()) for p in (path_a, path_b)]
    for path, report in zip((path_a, path_b), reports):
        info = report.get("info", {})
        print(f"{path}: git {info.get('git')}, {info.get('wall_s')} s, work {info.get('work')}")
    a, b = (report["artefacts"] for report in reports)
    counts = {"same": 0, "DIFFERENT": 0, "missing": 0}
    width = max(len(k) for k in {**a, **b})
    for name in [*a, *(k for k in b if k not in a)]:
        if name not in a or name not in b:
            state, where = "missing", f" (only in {path_a if name in a else path_b})"
        else:
            state, where = ("same" if a[name] == b[name] else "DIFFERENT"), ""
        counts[state] += 1
        print(f"{name:<{width}}  {state}{where}")
    print(f"identity: {counts['same']} same, {counts['DIFFERENT']} DIFFERENT, {counts['missing']} missing")
    return 0 if counts["DIFFERENT"] == 0 and counts["missing"] == 0 else 1


def json_changes(a, b, where: str = "") -> list[str]:
    """What ``b`` adds, removes or changes against ``a``, key by key (volatile keys left out)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [f"{where}: {json.dumps(a)[:60]} -> {json.dumps(b)[:60]}"]
    out = [f"{where}/{k}: removed" for k in a if k not in b and k not in VOLATILE_KEYS]
    out += [f"{where}/{k}: added" for k in b if k not in a and k not in VOLATILE_KEYS]
    for k in a:
        if k in b and k not in VOLATILE_KEYS:
            out += json_changes(a[k], b[k], f"{where}/{k}")
    return out


def csv_changes(a: Path, b: Path) -> list[str]:
    """Columns ``b`` adds or removes, and whether every column both have is equal in every row."""
    rows_a, rows_b = (list(csv.DictReader(p.open(encoding="utf-8"))) for p in (a, b))
    cols_a, cols_b = (set(rows[0]) if rows else set() for rows in (rows_a, rows_b))
    common = sorted(cols_a & cols_b)
    same = len(rows_a) == len(rows_b) and all(
        [r[c] for c in common] == [s[c] for c in common] for r, s in zip(rows_a, rows_b)
    )
    out = [f"column {c}: added" for c in sorted(cols_b - cols_a)] + [
        f"column {c}: removed" for c in sorted(cols_a - cols_b)
    ]
    return out + ([] if same else ["the common columns differ"])


def explain(work_a: Path, work_b: Path, path_a: Path, path_b: Path) -> int:
    """For each DIFFERENT json/csv artefact of two runs' work folders: only added keys/columns, or what changed."""
    a, b = (json.loads(Path(p).read_text())["artefacts"] for p in (path_a, path_b))
    changed = 0
    for name in (n for n in a if n in b and a[n] != b[n]):
        fa, fb = work_a / name, work_b / name
        if name.endswith(".json"):
            lines = json_changes(json.loads(fa.read_text()), json.loads(fb.read_text()))
        elif name.endswith(".csv"):
            lines = csv_changes(fa, fb)
        else:
            lines = ["binary or text: differs"]
        changed += any(not line.endswith(": added") for line in lines)
        print(name, *lines, sep="\n    ")
    print(f"explain: {changed} artefact(s) with more than added keys or columns")
    return 1 if changed else 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "bench/out/identity_work", help="scratch folder")
    parser.add_argument("--out", type=Path, default=REPO / "bench/out/identity.json", help="JSON of the hashes")
    parser.add_argument("--force", action="store_true", help="clear a --work folder of an earlier run")
    parser.add_argument(
        "--compare", type=Path, nargs=2, metavar=("A", "B"), default=None, help="compare two JSONs; exit 1 if unequal"
    )
    parser.add_argument(
        "--explain", type=Path, nargs=2, metavar=("WORK_A", "WORK_B"), default=None,
        help="with --compare: the work folders of A and B; say what each differing json/csv adds or changes",
    )  # fmt: skip
    return parser


def main(args: argparse.Namespace) -> int:
    if args.compare and args.explain:
        return explain(*args.explain, *args.compare)
    if args.compare:
        return compare(*args.compare)
    work = args.work.absolute()
    prepare_work(work, args.force)
    start = time.perf_counter()
    timings = run_workflow(work)
    hashes, notes, skipped = collect(work)
    wall = time.perf_counter() - start
    width = max(len(k) for k in hashes)
    for name, digest in hashes.items():
        print(f"{name:<{width}}  {digest[:16]}  {notes[name]}")
    report = {
        "artefacts": hashes,
        "notes": notes,
        "not_compared": skipped,
        "info": {
            "repo": str(REPO), "git": git_state(), "python": sys.version.split()[0], "work": str(work),
            "wall_s": round(wall, 1), "step_s": {k: round(v, 1) for k, v in timings.items()},
            "commands": [f"python {shlex.join(argv)}" for _, argv in steps()],
        },
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"identity: {len(hashes)} artefacts hashed ({len(skipped)} files not compared) in {wall:.0f} s; {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
