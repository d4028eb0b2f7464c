"""python loss.py

The registered losses (maskcls/losses.py): lists every name train.py's --criterion accepts, what it computes,
its options with their defaults and the train.py flag of those that have one. Adding a loss is one decorated
function in maskcls/losses.py; its flags then appear in train.py --help.
"""

from __future__ import annotations

import argparse

from maskcls import losses
from maskcls.cli import HelpFormatter
from maskcls.utils import run_main


def get_args_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)


def main(args: argparse.Namespace) -> int:
    flags = {(f.criterion, f.option): f.flag for f in losses.criterion_flags()}
    names = losses.CRITERIA.names()
    aliases: dict[str, list[str]] = {}
    for alias in losses.CRITERIA.names(with_aliases=True):
        if alias not in names:
            aliases.setdefault(losses.CRITERIA.canonical(alias), []).append(alias)
    for name in names:
        options = [
            f"{k}={v}" + (f" ({flags[name, k]})" if (name, k) in flags else "")
            for k, v in losses.criterion_options(name).items()
        ]
        also = f" (also {', '.join(aliases[name])})" if name in aliases else ""
        print(f"{name}{also}: {', '.join(options) or 'no options'}")
        doc = " ".join((losses.CRITERIA.get(name).fn.__doc__ or "").split())
        print(f"    {doc}")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
