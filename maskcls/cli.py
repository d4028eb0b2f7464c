"""What every script's command line shares: the one help formatter, fixed-count options, and plain-text tables.

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--resize", type=int, nargs="+", action=ExactlyN, metavar=("H", "W"))

Every root script builds its parser this way, so --help reads alike everywhere.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


class ExactlyN(argparse.Action):
    """nargs="+" that insists on len(metavar) values, so `--resize 64` and `--resize 1 2 3` both say why."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) != len(self.metavar):
            raise argparse.ArgumentError(
                self,
                f"expected {len(self.metavar)} numbers ({' '.join(self.metavar)}), got {len(values)}: "
                + " ".join(str(v) for v in values),
            )
        setattr(namespace, self.dest, list(values))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help, the script's docstring as written (its sample commands stay on their lines),
    and an ExactlyN option shown by its metavars (``--resize H W``)."""

    def _format_args(self, action, default_metavar):
        if isinstance(action, ExactlyN):
            return " ".join(action.metavar)
        return super()._format_args(action, default_metavar)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain table: the first column left-aligned, the others right-aligned, two spaces apart."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths))) for r in cells
    )


def listing(items: Sequence, limit: int = 5) -> str:
    """``a, b, c and 4 more``: the first ``limit`` items of a list an error line names."""
    items = [str(i) for i in items]
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
