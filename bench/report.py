"""python bench/report.py [--out bench/out]

Render the JSON results the bench scripts wrote (bench/out/<name>.json) as Markdown for BENCHMARKS.md:
the machine, one table row per ``bench`` figure and per lever line, and where each profile is.
Only reads; missing results are listed, not an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's modules: utils

import common  # noqa: E402

from maskcls.utils import run_main  # noqa: E402

NAMES = ("crop_speed", "loader_speed", "train_speed", "infer_speed", "memory", "scaling")


def _rate(x: float) -> str:
    return f"{x:.1f}"


def _relative(path: str) -> str:
    """A path inside the repo as repo-relative (BENCHMARKS.md must not name this machine's checkout)."""
    try:
        return Path(path).resolve().relative_to(common.REPO).as_posix()
    except ValueError:
        return path


def render(results: dict[str, dict]) -> str:
    lines = []
    first = next(iter(results.values()), None)
    if first is not None:
        lines += [common.describe_machine(first["machine"]).replace("machine: ", "Machine: "), ""]
    lines += [
        "| figure | project img/s | baseline img/s | ratio | details |",
        "|---|---:|---:|---:|---|",
    ]
    for result in results.values():
        for fig in result.get("figures", []):
            if fig.get("name") == "memory":
                lines.append(
                    f"| memory | peak {fig['peak_rss_gib']:.2f} GiB | cache {fig['cache_gib']:.3f} GiB | "
                    f"{'ok' if fig['ok'] else 'OVER'} | budget cache + 1.5 = {fig['budget_gib']:.2f} GiB |"
                )
                continue
            lines.append(
                f"| {fig['name']} | {_rate(fig['project'])} | {_rate(fig['baseline'])} | {fig['ratio']:.2f} | "
                f"{fig.get('note', '')} |"
            )
        for lev in result.get("levers", []):
            lines.append(
                f"| &nbsp;&nbsp;lever: {lev['name']} | {_rate(lev['value'])} | | {lev['ratio']:.2f} | vs baseline |"
            )
        for variant, why in result.get("unavailable", {}).items():
            lines.append(f"| {variant} | unavailable | | | {why} |")
    profiles = [f"- {name}: {_relative(r['profile'])}" for name, r in results.items() if r.get("profile")]
    if profiles:
        lines += ["", "Profiles:", *profiles]
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=common.OUT, help="folder holding the bench JSON results")
    return parser


def main(args: argparse.Namespace) -> int:
    results, missing = {}, []
    for name in NAMES:
        path = args.out / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
        else:
            missing.append(name)
    print(render(results), end="")
    if missing:
        print(f"\n(no results yet for: {', '.join(missing)}; run bench/<name>.py)")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
