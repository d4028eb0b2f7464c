"""maskcls: everything reusable behind the root scripts (train.py, inference.py, ensemble.py, ...).

The package never imports a root script; the scripts import the package. Modules import torch where they use
it, so that every script's --help answers without it.

Importing it also installs ``sys.excepthook`` below (standard library only, so that it is in place before a script
imports numpy, PIL or torch): a script that dies because a third-party package is missing, typically ``python
train.py`` outside the virtual environment, prints one line that names ``make install`` instead of a traceback. A
missing module of the project itself (``maskcls.*``), of the standard library, or inside a package that is installed
keeps its traceback. Root scripts whose first import is not ``maskcls`` import it first (``# isort: split``).
"""

from __future__ import annotations

import sys

INSTALL_HINT = "run make install and use .venv/bin/python (or source .venv/bin/activate)"


def missing_dependency(exc: BaseException) -> str | None:
    """The one line for ``exc`` if it says a third-party package is not installed at all, else None."""
    name = getattr(exc, "name", None)
    if not isinstance(exc, ModuleNotFoundError) or not isinstance(name, str) or not name:
        return None
    top = name.partition(".")[0]
    if top == __name__ or top in sys.stdlib_module_names:
        return None
    import importlib.util

    try:
        if importlib.util.find_spec(top) is not None:
            return None  # installed, but a submodule is missing (a version mismatch): the traceback says more
    except (ImportError, ValueError):
        return None
    return f"the package {top!r} is missing ({exc}); {INSTALL_HINT}"


def _excepthook(exc_type, exc, tb, previous=sys.excepthook):
    try:
        line = missing_dependency(exc)
    except Exception:  # never hide the original error behind one of this hook's own
        line = None
    if line is None:
        previous(exc_type, exc, tb)
    else:
        print(f"error: {line}", file=sys.stderr)


if sys.excepthook is sys.__excepthook__:  # leave IPython's, pytest's or a user's own hook alone
    sys.excepthook = _excepthook
