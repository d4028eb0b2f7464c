"""train.py: CutMix geometry, optimisers/schedulers, full runs and their artifacts, resume, config, DDP.

Runs are tiny (timm's test_resnet, 32x32 px, 15 persons of tests/helpers.py's colour-coded images,
workers 0, one CPU thread: on a shared 2-core machine more threads spin-wait and run 40x slower).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import make_tiny_dataset  # noqa: E402

import train  # noqa: E402
from maskcls import artifacts, augment, checkpoint, config, optim, sampler  # noqa: E402
from maskcls.distributed import DistInfo  # noqa: E402
from maskcls.folds import Split, person_folds, split_records  # noqa: E402
from maskcls.images import IMAGENET_MEAN, IMAGENET_STD, ImageCache  # noqa: E402
from maskcls.labels import class_names  # noqa: E402
from maskcls.registry import UnknownNameError  # noqa: E402
from maskcls.tables import build_image_table, inverse_frequency, load_train, read_eval_table  # noqa: E402
from maskcls.utils import UserError  # noqa: E402

N_PERSONS = 15  # 3 folds of 5 persons: 35 valid images, an odd count (DDP pads, then de-duplicates)
TB_TAGS = (
    "train/loss",
    "train/acc",
    "train/f1",
    "train/lr",
    "valid/loss",
    "valid/acc",
    "valid/f1",
    "valid/f1_mask",
    "valid/f1_gender",
    "valid/f1_age",
)
ARTIFACTS = (
    "config.json",
    "best.pt",
    "last.pt",
    "log.csv",
    "summary.json",
    "valid_preds.csv",
    "confusion_matrix.png",
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "data", n_persons=N_PERSONS)["data_dir"]


@pytest.fixture(scope="module")
def data_dir_2folds(data_dir, tmp_path_factory) -> Path:
    """data_dir's persons for the 2-fold runs: a data folder has one train/folds.csv, written for 3 folds there."""
    copy = tmp_path_factory.mktemp("data_2folds") / "data"
    shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("folds.csv"))
    return copy


def base_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data-dir", str(data_dir), "--output-dir", str(out), "--model", "test_resnet", "--no-pretrained",
        "--resize", "32", "32", "--batch-size", "8", "--workers", "0", "--folds", "3", "--lr", "1e-2",
        *extra,
    ]  # fmt: skip


def train_run(argv: list[str]) -> dict:
    return train.main(train.get_args_parser().parse_args(argv))


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory) -> Path:
    """One plain 4-epoch run; tests read its artifacts."""
    out = tmp_path_factory.mktemp("runs")
    result = train_run(base_args(data_dir, out, "--epochs", "4", "--name", "plain"))
    assert result["status"] == "finished"
    return Path(result["run_dir"])


# --------------------------------------------------------------------------- training loader
def _epoch(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_training_loader_is_the_same_whatever_the_workers_and_cache(data_dir):
    records = build_image_table(data_dir, log=None)
    split = Split(train=records[:40], valid=records[40:48])
    size, mean, std = (24, 20), IMAGENET_MEAN, IMAGENET_STD
    cache = ImageCache([r.path for r in records[:48]], size, progress=False, log=None)

    def loader(workers, image_cache):
        return sampler.build_loaders(
            split, size, mean, std, 60, 16, 16, workers, "none", 3, image_cache, DistInfo(), pin_memory=False
        )[0]

    reference = _epoch(loader(0, cache), 1)
    assert [tuple(x.shape) for x, _ in reference] == [(16, 3, 24, 20)] * 2  # 40 images, batch 16, last dropped
    images, labels = reference[0]
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    # normalised images: roughly centred, and the labels are the sampled records' labels
    assert -3 < images.mean().item() < 3 and set(labels.tolist()) <= {r.label() for r in split.train}
    for other in (_epoch(loader(2, cache), 1), _epoch(loader(1, None), 1)):
        for (a, la), (b, lb) in zip(reference, other, strict=True):
            assert torch.equal(la, lb) and torch.allclose(a, b, atol=1e-6)
    assert not torch.equal(_epoch(loader(0, cache), 2)[0][0], images)  # a new epoch, new order and draws


# --------------------------------------------------------------------------- CutMix (pure functions)
def _coded_batch(n: int = 6, h: int = 8, w: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pixel of sample i is i, so each pasted pixel shows where it came from."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).clone()
    return images, torch.arange(n) * 3  # distinct targets: targets_b reveals the permutation


def _perm(targets: torch.Tensor, targets_b: torch.Tensor) -> torch.Tensor:
    return torch.tensor([int((targets == t).nonzero()) for t in targets_b])


def test_cutmix_strip_is_full_height_and_lam_matches_width():
    images, targets = _coded_batch()
    original = images.clone()
    n, _, h, w = images.shape
    widths = []
    for seed in range(200):
        mixed, ta, tb, lam = augment.cutmix_batch(images, targets, np.random.default_rng(seed), mode="strip")
        assert torch.equal(images, original), "the input batch must not be modified"
        assert torch.equal(ta, targets)
        perm = _perm(targets, tb)
        moved = [i for i in range(n) if perm[i] != i]
        if not moved:
            continue
        changed = mixed[moved[0], 0] != images[moved[0], 0]  # (h, w)
        cols = changed.any(0).nonzero().flatten()
        width = len(cols)
        if width:
            assert changed[:, cols].all(), "the strip must cover the full height"
            assert cols.max() - cols.min() + 1 == width, "the strip must be one contiguous band"
            x1, x2 = int(cols.min()), int(cols.max()) + 1
            for i in range(n):  # every sample gets the same band from its partner; the rest is untouched
                assert torch.equal(mixed[i][..., x1:x2], images[perm[i]][..., x1:x2])
                assert torch.equal(mixed[i][..., :x1], images[i][..., :x1])
                assert torch.equal(mixed[i][..., x2:], images[i][..., x2:])
        assert lam == pytest.approx(1 - width / w)
        widths.append(width)
    # Beta(1, 1): narrow and wide strips both occur
    assert min(widths) <= 0.2 * w and max(widths) >= 0.8 * w


def test_cutmix_box_area_gives_lam():
    images, targets = _coded_batch(h=12, w=10)
    n, _, h, w = images.shape
    partial_height = 0
    for seed in range(100):
        mixed, _, tb, lam = augment.cutmix_batch(images, targets, np.random.default_rng(seed), mode="box")
        perm = _perm(targets, tb)
        moved = [i for i in range(n) if perm[i] != i]
        if not moved:
            continue
        changed = mixed[moved[0], 0] != images[moved[0], 0]
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        area = int(changed.sum())
        assert area == len(rows) * len(cols), "the pasted region must be a rectangle"
        assert lam == pytest.approx(1 - area / (h * w))
        partial_height += 0 < len(rows) < h
    assert partial_height > 0, "box mode must not always paste full-height strips"


def test_mixup_and_mix_batch_branches():
    images, targets = _coded_batch()
    mixed, ta, tb, lam = augment.mixup_batch(images, targets, np.random.default_rng(0), alpha=0.4)
    perm = _perm(targets, tb)
    assert 0 < lam < 1
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[perm])

    same, ta, tb, lam = augment.mix_batch(images, targets, np.random.default_rng(0), cutmix_p=0.0)
    assert same is images and lam == 1.0 and torch.equal(ta, tb)
    _, _, _, lam = augment.mix_batch(images, targets, np.random.default_rng(0), cutmix_p=1.0, cutmix_mode="strip")
    assert lam <= 1.0
    # same generator seed -> same mix (training reproducibility rests on this)
    a = augment.mix_batch(images, targets, np.random.default_rng(5), cutmix_p=0.5, mixup_alpha=0.2)
    b = augment.mix_batch(images, targets, np.random.default_rng(5), cutmix_p=0.5, mixup_alpha=0.2)
    assert torch.equal(a[0], b[0]) and a[3] == b[3]


def test_mixed_loss_weights_both_targets():
    logits = torch.randn(4, 18)
    a, b = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8])
    ce = nn.CrossEntropyLoss()
    assert torch.allclose(augment.mixed_loss(ce, logits, a, b, 0.3), 0.3 * ce(logits, a) + 0.7 * ce(logits, b))
    assert torch.allclose(augment.mixed_loss(ce, logits, a, b, 1.0), ce(logits, a))


def test_inverse_frequency_weights():
    w = inverse_frequency(np.array([0, 0, 0, 1]), num_classes=3)
    assert w[0] == pytest.approx(4 / (2 * 3)) and w[1] == pytest.approx(4 / (2 * 1)) and w[2] == 1.0


# --------------------------------------------------------------------------- optimisers and schedulers
@pytest.mark.parametrize("optimizer", optim.OPTIMIZERS.names())
@pytest.mark.parametrize("scheduler", optim.SCHEDULERS.names())
def test_each_optimizer_and_scheduler_steps(optimizer, scheduler):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    opt = optim.build_optimizer(net, optimizer, lr=0.1, weight_decay=0.01, momentum=0.9)
    spec = optim.ScheduleSpec(epochs=3, steps_per_epoch=4, lr=0.1, min_lr=1e-4, step_size=1, gamma=0.5, cycle_epochs=2)
    sched, when = optim.build_scheduler(opt, scheduler, spec)
    assert when == ("batch" if scheduler == "cyclic" else "epoch")
    if scheduler == "cyclic":
        assert sched.cycle_momentum == (optimizer == "sgd")  # never for Adam-family (no momentum to cycle)
    before = [p.detach().clone() for p in net.parameters()]
    lr_before = opt.param_groups[0]["lr"]
    net(torch.randn(5, 4)).pow(2).mean().backward()
    opt.step()
    if sched is not None:
        sched.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    if scheduler in ("step", "cosine"):
        assert opt.param_groups[0]["lr"] < lr_before
    elif scheduler == "cyclic":
        assert opt.param_groups[0]["lr"] > lr_before  # rising from min_lr towards lr
    # states round-trip (resume)
    opt2 = optim.build_optimizer(net, optimizer, lr=0.1, weight_decay=0.01, momentum=0.9)
    opt2.load_state_dict(opt.state_dict())
    if sched is not None:
        optim.build_scheduler(opt2, scheduler, spec)[0].load_state_dict(sched.state_dict())


def test_norms_and_biases_get_no_weight_decay():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    opt = optim.build_optimizer(net, "adamw", lr=0.1, weight_decay=0.05, momentum=0.9)
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 0.05]


# --------------------------------------------------------------------------- arguments
def test_help_lists_names_and_defaults(capsys):
    with pytest.raises(SystemExit):
        train.get_args_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for name in ("ResNet18", "EffB3", "focal", "label_smoothing", "madgrad", "cyclic", "(default: 64)"):
        assert name in out


def test_baseline_underscore_aliases():
    args = train.get_args_parser().parse_args(
        ["--batch_size", "7", "--valid_batch_size", "9", "--lr_decay_step", "3", "--log_interval", "5",
         "--model_dir", "out", "--val_ratio", "0.3", "--data_dir", "d"]
    )  # fmt: skip
    assert (args.batch_size, args.valid_batch_size, args.lr_decay_step, args.log_interval) == (7, 9, 3, 5)
    assert (args.output_dir, args.val_ratio, args.data_dir) == ("out", 0.3, "d")


@pytest.mark.parametrize("values", [["64"], ["1", "2", "3"]])
def test_resize_needs_two_numbers(values, capsys):
    with pytest.raises(SystemExit) as e:
        train.get_args_parser().parse_args(["--resize", *values])
    assert e.value.code == 2
    assert "--resize: expected 2 numbers (H W)" in capsys.readouterr().err


def test_fold_values():
    parse = train.get_args_parser().parse_args
    assert parse(["--fold", "all"]).fold == "all"
    assert parse(["--fold", "none"]).fold is None
    assert parse(["--fold", "2"]).fold == 2
    with pytest.raises(UserError, match="--fold 7 does not exist"):
        config.check_args(parse(["--fold", "7"]))
    with pytest.raises(UnknownNameError, match="sgd, adam, adamw, madgrad"):
        config.check_args(parse(["--scheduler", "cosine", "--optimizer", "lion"]))
    with pytest.raises(UnknownNameError, match="step, cosine, cyclic, none"):
        config.check_args(parse(["--scheduler", "onecycle"]))
    assert parse(["--drop-ages", "57", "59"]).drop_ages == [57, 59] and parse([]).drop_ages is None
    with pytest.raises(UserError, match="--drop-ages LO HI needs LO <= HI"):
        config.check_args(parse(["--drop-ages", "59", "57"]))
    with pytest.raises(UserError, match="--patience stops on valid F1"):
        config.check_args(parse(["--fold", "none", "--patience", "3"]))
    config.check_args(parse(["--fold", "none", "--val-ratio", "0.2", "--patience", "3"]))


@pytest.mark.slow
def test_unknown_names_end_with_one_line(data_dir, tmp_path):
    cases = {"--model": "ResNet18", "--criterion": "focal", "--optimizer": "madgrad"}
    # The three CLIs start together: most of their time is importing torch, which overlaps well.
    procs = {
        flag: subprocess.Popen(
            [sys.executable, "train.py", flag, "nope", "--data-dir", str(data_dir), "--output-dir", str(tmp_path)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
        )
        for flag in cases
    }  # fmt: skip
    for flag, listed in cases.items():
        _, err = procs[flag].communicate(timeout=180)
        assert procs[flag].returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), err
        assert "'nope'" in lines[0] and listed in lines[0], lines[0]
    assert not any(tmp_path.iterdir()), "nothing may be written for a bad name"


# --------------------------------------------------------------------------- a full run
@pytest.mark.slow
def test_run_writes_every_artifact(finished_run: Path, data_dir: Path):
    for name in ARTIFACTS:
        assert (finished_run / name).is_file(), name
    config = json.loads((finished_run / "config.json").read_text())
    assert {"args", "versions", "git_commit", "start_time", "image_dir", "command"} <= set(config)
    assert config["image_dir"] == "images" and config["args"]["model"] == "test_resnet"
    assert {"python", "torch", "torchvision", "timm"} <= set(config["versions"])

    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_run"] == 4
    assert set(summary["best"]) == {"f1", "acc", "f1_mask", "f1_gender", "f1_age", "loss"}
    assert summary["fold"] == 0 and summary["folds"] == 3 and summary["train_images_per_s"] > 0
    startup = summary["startup"]  # where the time before the first batch went (issue 14)
    assert {"first_batch_s", "imports_s", "data_s", "model_and_loaders_s"} <= set(startup)
    parts = sum(v for k, v in startup.items() if k != "first_batch_s")
    assert startup["first_batch_s"] == pytest.approx(parts, abs=0.01) and startup["imports_s"] > 0

    log = read_csv(finished_run / "log.csv")
    assert list(log[0]) == list(artifacts.LOG_COLUMNS) and [int(r["epoch"]) for r in log] == [1, 2, 3, 4]
    best_row = max(log, key=lambda r: float(r["valid_f1"]))
    assert int(best_row["epoch"]) == summary["best_epoch"], "best.pt is chosen by valid macro F1"

    preds = read_csv(finished_run / "valid_preds.csv")
    assert list(preds[0]) == ["rel", "person_id", "label", "pred", *(f"p{i}" for i in range(18))]
    assert len(preds) == 35 and len({r["rel"] for r in preds}) == 35
    folds = person_folds(load_train(data_dir, log=None)[0], n_folds=3, seed=42)
    assert all(folds[r["person_id"]] == 0 for r in preds), "valid = exactly the persons of fold 0"
    probs = np.array([[float(r[f"p{i}"]) for i in range(18)] for r in preds])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert all(int(r["pred"]) == int(np.argmax(p)) for r, p in zip(preds, probs))

    ckpt = torch.load(finished_run / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["format"] == "maskcls-checkpoint" and ckpt["version"] == 1
    meta = ckpt["meta"]
    assert meta["model"] == "timm:test_resnet" and meta["head"] == "single" and meta["image_size"] == [32, 32]
    assert meta["classes"] == class_names() and meta["num_classes"] == 18 and meta["image_dir"] == "images"
    assert meta["epoch"] == summary["best_epoch"] and meta["metrics"]["f1"] == pytest.approx(summary["best"]["f1"])
    assert not any(k.startswith("module.") for k in ckpt["model_state"])
    last = torch.load(finished_run / "last.pt", map_location="cpu", weights_only=True)
    for key in ("optimizer", "scheduler", "scaler", "ema_state", "epoch", "best_f1", "rng"):
        assert key in last, key
    assert last["epoch"] == 4 and {"torch", "numpy", "python"} <= set(last["rng"])


@pytest.mark.slow
def test_tensorboard_has_every_tag(finished_run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(finished_run), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in TB_TAGS:
        assert tag in tags["scalars"], tag
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3, 4]
    assert "valid/confusion_matrix" in tags["images"]
    assert "hparam/best_f1" in tags["scalars"]


@pytest.mark.slow
def test_model_learns_the_easy_task(finished_run: Path):
    # Colour encodes the label: after 4 short epochs the model is far above the 1/18 chance level.
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["best"]["f1"] > 3 / 18
    log = read_csv(finished_run / "log.csv")
    assert float(log[-1]["train_loss"]) < float(log[0]["train_loss"])


def test_run_dir_is_never_overwritten(tmp_path):
    info = DistInfo()
    first = train.make_run_dir(tmp_path, "x", info)
    second = train.make_run_dir(tmp_path, "x", info)
    assert first.name == "x" and second.name == "x_2"


# --------------------------------------------------------------------------- config reload
@pytest.mark.slow
def test_config_reload_with_cli_override(finished_run: Path):
    config = finished_run / "config.json"
    args = train.get_args_parser().parse_args(["--config", str(config), "--lr", "0.5", "--epochs", "1"])
    saved = json.loads(config.read_text())["args"]
    assert args.lr == 0.5 and args.epochs == 1  # explicit flags win
    assert args.model == saved["model"] == "test_resnet" and args.resize == [32, 32] and args.pretrained is False
    assert args.data_dir == saved["data_dir"] and args.batch_size == 8 and args.folds == 3
    assert args.config == str(config) and args.resume is None
    assert train.get_args_parser().parse_args([]).model == "ResNet18", "a fresh parser has the real defaults"


def test_config_rerun_is_named_by_what_changed(tmp_path):
    """--config without --name: the flags that differ from the saved run, before its fold part (so its folds stay
    one model group), deterministic; a clash still gets _2 from train.py (issue 25)."""
    path = tmp_path / "config.json"

    def rerun(saved_name, *argv: str) -> str:
        saved = train.get_args_parser().parse_args(["--model", "test_resnet", "--workers", "2"])
        saved.name = saved_name
        path.write_text(json.dumps({"args": config.json_args(saved)}))
        return train.get_args_parser().parse_args(["--config", str(path), *argv]).name

    assert rerun("x", "--lr", "1e-3") == "x_lr1e-3"
    assert rerun("r18_fold0", "--lr", "0.001", "--no-pretrained", "--resize", "48", "36") == (
        "r18_lr1e-3_no-pretrained_resize48x36_fold0"
    )
    assert rerun("r18_fold0_2", "--fold", "1", "--criterion", "focal") == "r18_criterion-focal_fold1"
    assert rerun("r18_fold0", "--workers", "0", "--output-dir", "elsewhere") == "r18_fold0", "not what the run is"
    assert rerun("r18_fold0") == "r18_fold0"  # a plain repeat: r18_fold0_2
    assert rerun("r18_fold0", "--name", "mine", "--lr", "1") == "mine"
    assert rerun(None, "--lr", "3e-4", "--epochs", "20") == "test_resnet_ce_epochs20_fold0"  # 3e-4: the default
    assert rerun(None, "--model", "ResNet18", "--fold", "all") == "ResNet18_ce_cv5"


def test_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        train.get_args_parser().parse_args(["--config", str(bad)])
    with pytest.raises(UserError, match="does not exist"):
        train.get_args_parser().parse_args(["--config", str(tmp_path / "missing.json")])


# --------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_continues_exactly(data_dir, tmp_path):
    # --amp off: fp32 whatever the machine, so that the resumed run compares exactly with the straight one
    extra = ["--epochs", "2", "--name", "r", "--cutmix", "0.5", "--ema", "0.9", "--sampler", "weighted",
             "--scheduler", "cyclic", "--class-weights", "balanced", "--amp", "off"]  # fmt: skip
    straight = Path(train_run(base_args(data_dir, tmp_path / "a", *extra))["run_dir"])
    killed = train_run(base_args(data_dir, tmp_path / "b", *extra, "--stop-after", "1"))
    assert killed["status"] == "stopped"
    run_dir = Path(killed["run_dir"])
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    resumed = train_run(["--resume", str(run_dir / "last.pt")])
    assert Path(resumed["run_dir"]) == run_dir and resumed["status"] == "finished"
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["r"], "resume writes into the same run dir"

    a = torch.load(straight / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert b["epoch"] == 2 and len(b["history"]) == 2
    for ra, rb in zip(a["history"], b["history"]):
        for key in ("train_loss", "valid_loss", "valid_f1", "valid_acc", "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), key
    for key in ("model_state", "raw_model_state"):
        for name, tensor in a[key].items():
            assert torch.allclose(tensor.float(), b[key][name].float(), rtol=1e-5, atol=1e-7), f"{key}.{name}"
    assert len(read_csv(run_dir / "log.csv")) == 2
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert len(json.loads((run_dir / "config.json").read_text())["resumes"]) == 1
    assert not list(run_dir.glob("config.edited*")), "train.py's own config.json is updated in place"


@pytest.mark.slow
def test_resume_keeps_a_hand_edited_config_aside(data_dir, tmp_path, capsys):
    """--resume takes the arguments from last.pt: a config.json edited by hand (even into invalid JSON) is moved
    aside with a one-line warning, never overwritten, and a new one is written."""
    run = tmp_path / "e"
    config = run / "config.json"
    assert train_run(base_args(data_dir, tmp_path, "--epochs", "3", "--name", "e", "--stop-after", "1"))
    broken = b'{"args": {"lr": 0.5, '  # an edit that broke the JSON
    config.write_bytes(broken)
    capsys.readouterr()
    assert train_run(["--resume", str(run), "--stop-after", "2"])["status"] == "stopped"
    (line,) = [w for w in capsys.readouterr().err.splitlines() if w.startswith(f"warning: {config} was edited")]
    assert "not a valid JSON object" in line and str(run / "config.edited.json") in line and f"--resume {run}" in line
    assert (run / "config.edited.json").read_bytes() == broken
    rewritten = json.loads(config.read_text())
    assert rewritten["args"]["lr"] == 1e-2 and rewritten["args"]["epochs"] == 3

    rewritten["args"]["epochs"] = 9  # a valid edit: not used either, and kept
    config.write_text(json.dumps(rewritten, indent=2))
    edit = config.read_bytes()
    assert train_run(["--resume", str(run)])["status"] == "finished"
    (line,) = [w for w in capsys.readouterr().err.splitlines() if w.startswith(f"warning: {config} was edited")]
    assert "not a valid JSON" not in line and str(run / "config.edited_2.json") in line
    assert (run / "config.edited_2.json").read_bytes() == edit and (run / "config.edited.json").read_bytes() == broken
    assert len(read_csv(run / "log.csv")) == 3 and json.loads(config.read_text())["args"]["epochs"] == 3


@pytest.mark.slow
def test_resume_of_another_model_is_one_line(finished_run: Path):
    summary = (finished_run / "summary.json").read_bytes()
    args = train.get_args_parser().parse_args(["--resume", str(finished_run / "last.pt"), "--model", "resnet10t"])
    with pytest.raises(UserError, match="holds a timm:test_resnet") as e:
        train.main(args)
    assert "\n" not in str(e.value)
    assert (finished_run / "summary.json").read_bytes() == summary, "a refused resume writes nothing"


@pytest.mark.slow
def test_a_second_trainer_of_a_run_is_refused_in_one_line(finished_run: Path, tmp_path):
    from helpers import hold_run_lock

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    holder = hold_run_lock(run)  # as a first `train.py --resume` would, still training
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "train.py"), "--resume", str(run)],
            capture_output=True, text=True, env=subprocess_env(), timeout=300,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {run} is being trained by pid {holder.pid}; wait for that to end, or stop it (kill {holder.pid}), "
        "then run this again"
    )
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files, "the refused trainer wrote nothing"


@pytest.mark.slow
def test_corrupt_last_pt(finished_run: Path, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(finished_run / "best.pt", run / "best.pt")
    data = (finished_run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError) as e:
        checkpoint.resolve_resume(str(run / "last.pt"))
    message = str(e.value)
    assert "\n" not in message and str(run / "last.pt") in message and "best.pt" in message
    path, ckpt = checkpoint.resolve_resume(str(run))  # a run directory falls back to best.pt, with a warning
    assert path == run / "best.pt" and ckpt["format"] == "maskcls-checkpoint"
    assert "warning" in capsys.readouterr().err
    with pytest.raises(UserError, match="not a maskcls checkpoint"):
        torch.save({"weights": 1}, tmp_path / "other.pt")
        checkpoint.resolve_resume(str(tmp_path / "other.pt"))


@pytest.mark.slow
def test_resume_from_best_pt_keeps_the_corrupt_last_pt_and_the_dropped_log_rows(data_dir, tmp_path, capsys):
    """The issue's probe 8: a finished run whose last.pt is cut in half, resumed. It goes on from best.pt and says
    from which epoch; the corrupt last.pt and the log rows after that epoch stay on disk under their own names."""
    run = tmp_path / "p8"
    assert train_run(base_args(data_dir, tmp_path, "--epochs", "2", "--name", "p8", "--stop-after", "1"))
    best_of_epoch_1 = (run / "best.pt").read_bytes()
    assert train_run(["--resume", str(run)])["status"] == "finished"
    (run / "best.pt").write_bytes(best_of_epoch_1)  # epoch 1 stays the best: resuming from it rewinds one epoch
    log_before = (run / "log.csv").read_text().splitlines()
    cut = (run / "last.pt").read_bytes()[:1000]
    (run / "last.pt").write_bytes(cut)
    capsys.readouterr()
    assert train_run(["--resume", str(run)])["status"] == "finished"
    err = capsys.readouterr().err
    (line,) = [w for w in err.splitlines() if w.startswith(f"warning: {run} resumes after epoch 1 from best.pt")]
    (corrupt,) = run.glob("last.pt.corrupt-*")
    (dropped,) = run.glob("log.dropped-*.csv")
    assert f"last.pt (corrupt) is kept as {corrupt}" in line and f"rows of epoch(s) 2 are kept in {dropped}" in line
    assert corrupt.read_bytes() == cut
    assert dropped.read_text().splitlines() == [log_before[0], log_before[2]]  # the header and epoch 2's row
    log_after = (run / "log.csv").read_text().splitlines()
    assert log_after[:2] == log_before[:2] and [r["epoch"] for r in read_csv(run / "log.csv")] == ["1", "2"]
    assert torch.load(run / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 2


# --------------------------------------------------------------------------- variants
@pytest.mark.slow
def test_multi_head_run_with_every_trick(data_dir, tmp_path):
    result = train_run(
        base_args(
            data_dir, tmp_path, "--head", "multi", "--head-weights", "1", "0.5", "2", "--epochs", "1",
            "--fold", "none", "--val-ratio", "0.3", "--cutmix", "1", "--cutmix-mode", "box", "--mixup", "0.2",
            "--class-weights", "balanced", "--accum-steps", "2", "--clip-grad", "1", "--amp", "--ema", "0.5",
            "--optimizer", "madgrad", "--scheduler", "step", "--criterion", "focal", "--focal-gamma", "1.5",
            "--age-old-threshold", "58", "--cache", "--no-label-fixes",
        )
    )  # fmt: skip
    run = Path(result["run_dir"])
    assert result["status"] == "finished" and run.name == "test_resnet_focal_holdout"
    meta = torch.load(run / "best.pt", map_location="cpu", weights_only=True)["meta"]
    assert meta["head"] == "multi" and meta["old_threshold"] == 58 and meta["args"]["focal_gamma"] == 1.5
    assert meta["args"]["label_fixes"] == "none"
    preds = read_csv(run / "valid_preds.csv")
    probs = np.array([[float(r[f"p{i}"]) for i in range(18)] for r in preds])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    # validation is scored at 60 whatever the training threshold: a 58-year-old is 30-59 in valid_preds
    labels = dict(zip((r["rel"] for r in preds), (int(r["label"]) for r in preds)))
    for rec in load_train(data_dir, log=None)[1]:
        if rec.rel in labels:
            assert labels[rec.rel] == rec.label(60)


@pytest.mark.slow
def test_fold_all_writes_cv_summary(data_dir_2folds, tmp_path):
    result = train_run(base_args(data_dir_2folds, tmp_path, "--fold", "all", "--folds", "2", "--epochs", "1"))
    parent = Path(result["run_dir"])
    assert parent.name == "test_resnet_ce_cv2"
    cv = json.loads((parent / "cv_summary.json").read_text())
    assert cv["folds"] == 2 and cv["n"] == N_PERSONS * 7 and len(cv["fold_f1"]) == 2
    assert 0 <= cv["cv"]["f1"] <= 1
    for k in range(2):
        assert json.loads((parent / f"fold{k}" / "summary.json").read_text())["fold"] == k
        assert json.loads((parent / f"fold{k}" / "config.json").read_text())["args"]["fold"] == k
    rels = [r["rel"] for k in range(2) for r in read_csv(parent / f"fold{k}" / "valid_preds.csv")]
    assert len(rels) == len(set(rels)) == N_PERSONS * 7, "out-of-fold predictions cover every image once"


@pytest.mark.slow
def test_fold_all_resumes_fold_by_fold(data_dir_2folds, tmp_path):
    argv = base_args(data_dir_2folds, tmp_path, "--fold", "all", "--folds", "2", "--epochs", "2", "--name", "cv")
    assert train_run([*argv, "--stop-after", "1"])["status"] == "stopped"
    parent = tmp_path / "cv"
    assert not (parent / "cv_summary.json").exists() and not (parent / "fold1").exists()
    result = train_run(["--resume", str(parent)])  # the CV directory: finishes fold0, then runs fold1
    assert result["status"] == "finished" and Path(result["run_dir"]) == parent
    for k in range(2):
        assert len(read_csv(parent / f"fold{k}" / "log.csv")) == 2
    assert json.loads((parent / "cv_summary.json").read_text())["n"] == N_PERSONS * 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv"]
    with pytest.raises(UserError, match="--resume DIR of a `--fold all` run"):
        config.check_args(train.get_args_parser().parse_args(["--resume", str(parent), "--fold", "1"]))


def test_a_diverged_run_stops_and_saves_no_nan_model(data_dir, tmp_path, capsys):
    """The issue's probe: --lr 1e30 with one batch per epoch, so the per-batch loss check sees only the loss
    before the one step. The epoch's weights or validation go non-finite: the run stops before saving them."""
    from helpers import run_cli

    argv = base_args(data_dir, tmp_path, "--epochs", "2", "--name", "nan", "--lr", "1e30", "--batch-size", "256")
    code, _, err = run_cli(train, argv, capsys)
    line = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert line.startswith("error: ") and "became nan" in line and "(epoch 1/2" in line and "lower --lr" in line, line
    run = tmp_path / "nan"
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists() and not (run / "log.csv").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "became nan" in summary["error"]


def test_non_finite_weights_are_found_by_name():
    state = {"a.weight": torch.ones(3), "steps": torch.tensor(4), "b.bias": torch.tensor([0.0, float("inf")])}
    assert checkpoint.non_finite_tensor(state) == "b.bias"
    state["b.bias"][1] = 1.0
    assert checkpoint.non_finite_tensor(state) is None and checkpoint.non_finite_tensor({}) is None


@pytest.mark.slow
def test_crash_marks_summary_failed(data_dir, tmp_path, capsys):
    broken = tmp_path / "data"
    shutil.copytree(data_dir, broken)
    victim = next((broken / "train" / "images").glob("*/mask3.*"))
    victim.write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image"):
        train_run(base_args(broken, tmp_path / "runs", "--epochs", "1", "--name", "boom"))
    summary = json.loads((tmp_path / "runs" / "boom" / "summary.json").read_text())
    assert summary["status"] == "failed" and "cannot read image" in summary["error"]

    # issue 25: inference says what became of the run, and the retry (data fixed) takes the name back
    import inference

    with pytest.raises(UserError) as e:
        inference.main(inference.get_args_parser().parse_args(["--run", str(tmp_path / "runs" / "boom")]))
    assert str(e.value).startswith(f"{tmp_path / 'runs' / 'boom'} has no best.pt: it failed after 0 epoch(s): cannot")
    shutil.copyfile(data_dir / victim.relative_to(broken), victim)
    capsys.readouterr()
    result = train_run(base_args(broken, tmp_path / "runs", "--epochs", "1", "--name", "boom"))
    assert Path(result["run_dir"]) == tmp_path / "runs" / "boom" and result["status"] == "finished"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["boom"]
    said = [line for line in capsys.readouterr().out.splitlines() if "replacing" in line]
    assert len(said) == 1 and said[0].startswith(f"{tmp_path / 'runs' / 'boom'}: replacing the run of this name")
    assert "ended before its first checkpoint (nothing in it to resume); it had stopped with: cannot read" in said[0]


# --------------------------------------------------------------------------- DDP (slowest: two processes)
@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(data_dir, tmp_path):
    argv = base_args(data_dir, tmp_path, "--epochs", "1", "--sampler", "weighted")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py", *argv],
        cwd=REPO, capture_output=True, text=True, env=subprocess_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in tmp_path.iterdir()]
    assert len(runs) == 1, f"exactly one run directory, got {runs}"
    run = runs[0]
    for name in ARTIFACTS:
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2
    preds = read_csv(run / "valid_preds.csv")
    assert len(preds) == 35 and len({r["rel"] for r in preds}) == 35, "padding duplicates removed"
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


# --------------------------------------------------------------------------- winners' options (issue 17)
def test_accumulation_groups_and_the_short_last_group():
    from maskcls import trainer

    # 5 batches in groups of 2: steps after batches 1, 3 and the short last group (batch 4, alone)
    got = [trainer.accumulation(i, 5, 2) for i in range(5)]
    assert got == [(2, False), (2, True), (2, False), (2, True), (1, True)]
    assert [trainer.accumulation(i, 3, 1) for i in range(3)] == [(1, True)] * 3


def test_amp_auto_is_bf16_only_where_native(monkeypatch):
    from maskcls import utils

    cpu = torch.device("cpu")
    monkeypatch.setattr(utils, "native_bf16", lambda device: True)
    assert utils.amp_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(utils, "native_bf16", lambda device: False)
    assert utils.amp_dtype("auto", cpu) is None and utils.amp_dtype("bf16", cpu) == torch.bfloat16
    assert train.get_args_parser().parse_args(["--amp", "auto"]).amp == "auto"
    assert train.get_args_parser().parse_args([]).amp == "auto", "the default, as inference.py's (issue 25)"
    assert [utils.amp_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["off", "bf16", "fp16"]


@pytest.mark.slow
def test_a_log_file_gets_a_line_per_epoch_and_no_progress_bars(data_dir, tmp_path):
    """train.py logging to a file (nohup, a scheduler, the demo's second fold): no tqdm redraws (\\r), one line
    per epoch. --amp is auto by default: the first line and summary.json say what it came to (issue 25)."""
    log = tmp_path / "train.log"
    argv = base_args(data_dir, tmp_path / "runs", "--epochs", "2", "--name", "logged", "--log-interval", "1")
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "train.py", *argv], cwd=REPO, stdout=f, stderr=f, env=subprocess_env(), timeout=300
        )
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text
    assert [line.split(":")[0] for line in text.splitlines() if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    from maskcls import utils

    ran = "bf16" if utils.native_bf16(torch.device("cpu")) else "off"
    assert json.loads((tmp_path / "runs" / "logged" / "summary.json").read_text())["amp"] == ran
    first = next(line for line in text.splitlines() if line.startswith(f"{tmp_path / 'runs' / 'logged'}: "))
    assert first.endswith(f", amp {ran} (--amp auto)"), first


@pytest.mark.slow
def test_fold_none_trains_on_every_person_without_validation(data_dir, tmp_path):
    result = train_run(base_args(data_dir, tmp_path, "--fold", "none", "--epochs", "2", "--name", "all"))
    run = Path(result["run_dir"])
    assert result["status"] == "finished" and result["best"] is None
    rows = read_csv(run / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(r["valid_f1"] == "" for r in rows)
    assert not (run / "valid_preds.csv").exists()
    # inference reads best.pt: the last epoch's weights
    n_images = len(load_train(data_dir, log=None)[1])
    best, last = (torch.load(run / f, map_location="cpu", weights_only=True) for f in ("best.pt", "last.pt"))
    assert best["meta"]["epoch"] == 2 and best["meta"]["metrics"] == {}
    for k, v in best["model_state"].items():
        assert torch.equal(v, last["model_state"][k]), k
    from maskcls import predict

    assert predict.load_checkpoint(run / "best.pt")["meta"]["epoch"] == 2  # what inference.py --run reads
    split = split_records(*reversed(load_train(data_dir, log=None)), None, 3, 42, 0.0)
    assert len(split.train) == n_images and split.valid == []
    # --val-ratio R still holds R of the persons out (what --fold none did before)
    held = split_records(*reversed(load_train(data_dir, log=None)), None, 3, 42, 0.3)
    assert held.valid and len(held.train) + len(held.valid) == n_images


@pytest.mark.slow
def test_pseudo_labels_join_training_only(data_dir, tmp_path):
    eval_table = read_eval_table(data_dir, "images")
    pseudo_csv = tmp_path / "pseudo.csv"
    chosen = eval_table[:3]
    pseudo_csv.write_text("ImageID,ans,prob\n" + "".join(f"{i},{k + 12},0.99\n" for k, (i, _) in enumerate(chosen)))
    args = train.get_args_parser().parse_args(base_args(data_dir, tmp_path, "--pseudo", str(pseudo_csv)))
    data = train.load_data(args, main_rank=False)
    plain = train.TrainData(data.persons, data.records, data.image_dir)
    for fold in (0, 1, 2):
        with_pseudo, without = data.split(args, fold), plain.split(args, fold)
        assert with_pseudo.valid == without.valid  # folds and validation untouched
        assert with_pseudo.train[: len(without.train)] == without.train
        added = with_pseudo.train[len(without.train) :]
        assert [r.label(58) for r in added] == [12, 13, 14] and [r.label(60) for r in added] == [12, 13, 14]
        assert all(r.path.is_file() and r.person_id.startswith("pseudo:") for r in added)
    result = train_run(base_args(data_dir, tmp_path, "--pseudo", str(pseudo_csv), "--epochs", "1", "--name", "ps"))
    run = Path(result["run_dir"])
    assert not any(r["person_id"].startswith("pseudo:") for r in read_csv(run / "valid_preds.csv"))
    assert json.loads((run / "config.json").read_text())["args"]["pseudo"] == str(pseudo_csv)
