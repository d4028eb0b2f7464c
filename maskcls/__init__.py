"""maskcls: everything reusable behind the root scripts (train.py, inference.py, ensemble.py, ...).

The package never imports a root script; the scripts import the package. Modules import torch where they use
it, so that every script's --help answers without it.
"""
