"""Each train person's apparent age in years, out of fold: a ridge regression on each fold run's backbone features.

    years = age_probe.probe_ages(runs, valid_sets, image_paths, ages)   # what audit_labels.py --age-probe calls

A K-fold recipe trains age as three groups, so its probabilities say little about *where* inside a group a
face lies: a written 60 who looks 32 and a written 60 who looks 57 both get p(30-59) near 1 (measured:
BENCHMARKS.md, label audit). Years are the evidence an age audit needs, and the backbone features hold them:
the age cues (wrinkles, grey hair) are what the groups were learnt from. For every fold run, a ridge
regression (scikit-learn, its penalty chosen by cross-validation) maps the run's pooled backbone features
(flip-averaged) to the written years of the persons the run trained on, then predicts the persons the run
validated; a person's estimate is the median of its 7 images'. Nothing is retrained, so any recipe's runs
can be probed, at the cost of one forward pass per image and run (K x the train images; a GPU is used when
there is one).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from maskcls.utils import UserError

if TYPE_CHECKING:
    import torch

RIDGE_ALPHAS = np.logspace(-2, 4, 13)  # RidgeCV's candidates, on standardised features
BATCH = 64


def feature_net(net: torch.nn.Module, head: str, name: str) -> torch.nn.Module:
    """The part of a trained network that returns its pooled features (what the classifier heads read)."""
    if head == "multi":
        return net.backbone  # MultiHeadNet: the timm model built with num_classes=0
    if not hasattr(net, "reset_classifier"):
        raise UserError(f"the age probe cannot read the features of model {name}; audit without --age-probe")
    net.reset_classifier(0)  # timm: the forward pass now ends at the pooled features
    return net


def image_features(net: torch.nn.Module, paths: Sequence[Path], meta: dict, device, desc: str) -> np.ndarray:
    """(N, D) float32 pooled features of the images, the mean of the image and its mirror (the TTA inference uses),
    through inference's batching (maskcls.predict: decoding threads on a CPU, workers on a GPU); an unreadable image
    stops it."""
    import torch

    from maskcls import predict

    net = predict.for_device(net, device)

    def features(images: torch.Tensor) -> torch.Tensor:
        return (net(images).float() + net(torch.flip(images, dims=[3])).float()) / 2

    amp = predict.resolve_amp("auto", device)
    size, workers = tuple(meta["image_size"]), min(4, os.cpu_count() or 1)
    out, failed, _ = predict.map_images(
        features, list(paths), size, meta["mean"], meta["std"], device, BATCH, workers, amp, desc=desc
    )
    if failed:
        row, why = next(iter(failed.items()))
        raise UserError(f"the age probe cannot read {paths[row]} ({why}); replace the file or drop --age-probe")
    return out


def fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Ridge regression of ``train_y`` on standardised ``train_x``, penalty by efficient leave-one-out CV."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    return model.fit(train_x, train_y).predict(test_x)


def person_median(image_years: np.ndarray) -> np.ndarray:
    """(P, 7) per-image estimates -> (P,) per person; the median, so one broken image cannot drag it."""
    return np.median(np.asarray(image_years, dtype=np.float64), axis=1)


def probe_ages(
    runs: Sequence[Path],
    valid_sets: Sequence[np.ndarray],
    image_paths: Sequence[Sequence[Path]],
    ages: np.ndarray,
    checkpoint: str = "last",
    device: str = "auto",
) -> np.ndarray:
    """(P,) out-of-fold age estimates in years: run k's probe is fitted on every person outside
    ``valid_sets[k]`` (the persons it trained on: indices into the P persons) and predicts those inside.

    ``image_paths``: (P, 7) image files per person; ``ages``: (P,) the years the runs trained on.
    """
    from maskcls import predict, utils

    dev = utils.resolve_device(device)
    ages = np.asarray(ages, dtype=np.float64)
    n_persons, n_images = len(ages), len(image_paths[0])
    paths = [p for person in image_paths for p in person]
    per_image = np.full((n_persons, n_images), np.nan)
    for k, (run, valid) in enumerate(zip(runs, valid_sets)):
        path, ckpt = predict.resolve_checkpoint(Path(run), checkpoint)
        meta = ckpt["meta"]
        net = feature_net(predict.load_net(ckpt, path), meta["head"], meta["model"])
        feats = image_features(net, paths, meta, dev, f"age probe {k + 1}/{len(runs)}")
        feats = feats.reshape(n_persons, n_images, -1)
        inside = np.zeros(n_persons, dtype=bool)
        inside[valid] = True
        x_train, y_train = np.concatenate(feats[~inside]), np.repeat(ages[~inside], n_images)
        per_image[inside] = fit_predict(x_train, y_train, np.concatenate(feats[inside])).reshape(-1, n_images)
    if np.isnan(per_image).any():
        raise RuntimeError("some persons were validated by no run")  # check_coverage guarantees this
    return person_median(per_image)
