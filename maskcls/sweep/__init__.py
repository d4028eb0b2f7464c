"""A sweep: plan.py (the --vary language, the variants, the manifest), queue.py (the runs as trials on
Optuna's storage), supervisor.py (the workers that train them) and verdict.py (each variant against the base).
sweep.py and verdict.py at the root are their command lines.
"""
