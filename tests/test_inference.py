"""inference.py on hand-built checkpoints, and train -> inference -> ensemble end to end on a tiny dataset."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helpers import make_tiny_dataset  # noqa: E402

import ensemble  # noqa: E402
import inference  # noqa: E402
from maskcls import metrics, models, predict  # noqa: E402
from maskcls.datasets import EvalDataset  # noqa: E402
from maskcls.images import eval_transform  # noqa: E402
from maskcls.labels import NUM_CLASSES, class_names  # noqa: E402
from maskcls.runs import ids_sha1  # noqa: E402
from maskcls.tables import read_eval_table  # noqa: E402
from maskcls.utils import run_main  # noqa: E402
from maskcls.voting import hard_vote  # noqa: E402

TINY_MODEL = "timm:resnet10t"
SIZE = [32, 24]  # H, W of the hand-built checkpoints


def make_checkpoint(path: Path, head: str = "single", image_dir: str = "images", seed: int = 0) -> None:
    """A checkpoint in the spec's format, as train.py writes it, from an untrained model."""
    torch.manual_seed(seed)
    net = models.create_model(TINY_MODEL, head=head, pretrained=False)
    meta = {
        "model": TINY_MODEL,
        "head": head,
        "image_size": SIZE,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "classes": class_names(),
        "num_classes": NUM_CLASSES,
        "image_dir": image_dir,
        "old_threshold": 60,
        "epoch": 1,
        "metrics": {k: 0.0 for k in ("f1", "acc", "f1_mask", "f1_gender", "f1_age", "loss")},
        "args": {"model": TINY_MODEL, "head": head},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "maskcls-checkpoint", "version": 1, "model_state": net.state_dict(), "meta": meta}, path)


def infer(run: Path, data_dir: Path, *extra: str) -> dict:
    argv = ["--run", str(run), "--data-dir", str(data_dir), "--workers", "0", "--device", "cpu", *extra]
    return inference.main(inference.get_args_parser().parse_args(argv))


def infer_cli(run: Path, data_dir: Path, capsys, *extra: str) -> tuple[int, str, str]:
    """The script's entry point in this process: (exit code, stdout, stderr)."""
    argv = ["--run", str(run), "--data-dir", str(data_dir), "--workers", "0", "--device", "cpu", *extra]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: inference.main(inference.get_args_parser().parse_args(argv)))
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def read_submission(path: Path) -> tuple[list[str], list[int]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "ImageID,ans"
    rows = [line.split(",") for line in lines[1:]]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def info_ids(data_dir: Path) -> list[str]:
    return [line.split(",")[0] for line in (data_dir / "eval" / "info.csv").read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    info = make_tiny_dataset(root / "data", n_persons=12, n_eval=16)
    return root, info


# --------------------------------------------------------------------------- hand-built checkpoints
@pytest.mark.parametrize(("head", "tta"), [("single", "flip"), ("multi", "none")])
def test_predictions_match_the_model(tiny, tmp_path, head, tta):
    root, info = tiny
    run = tmp_path / "run"
    make_checkpoint(run / "best.pt", head=head)
    meta = infer(run, root / "data", "--tta", tta, "--batch-size", "5", "--amp", "off")

    ids, ans = read_submission(run / "submission.csv")
    assert ids == info["eval_ids"] == info_ids(root / "data")
    probs = np.load(run / "eval_probs.npy")
    assert probs.dtype == np.float32 and probs.shape == (len(ids), NUM_CLASSES)
    assert ans == probs.argmax(axis=1).tolist()

    # The same numbers by hand: checkpoint -> model, checkpoint's size/mean/std -> eval_transform.
    ckpt = torch.load(run / "best.pt", weights_only=True)
    net = models.create_model(TINY_MODEL, head=head, pretrained=False)
    net.load_state_dict(ckpt["model_state"])
    net.eval()
    paths = [p for _, p in read_eval_table(root / "data")]
    ds = EvalDataset(paths, SIZE, eval_transform(SIZE, [0.5] * 3, [0.25] * 3))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        expected = models.logits_to_probs(net(x), head)
        if tta == "flip":
            expected = (expected + models.logits_to_probs(net(x.flip(3)), head)) / 2
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)

    saved = json.loads((run / "eval_meta.json").read_text())
    assert saved == json.loads(json.dumps(meta))
    assert saved["n"] == len(ids) and saved["tta"] == tta and saved["image_dir"] == "images"
    assert saved["ids_sha1"] == ids_sha1(ids) and saved["checkpoint"].endswith("best.pt")
    assert "metrics" not in saved and saved["unreadable"] == []


def test_unreadable_images_are_listed_or_filled(tmp_path, capsys):
    info = make_tiny_dataset(tmp_path / "data", n_persons=2, n_eval=8, quirks=False)
    run = tmp_path / "run"
    make_checkpoint(run / "best.pt")
    images = tmp_path / "data" / "eval" / "images"
    garbage, truncated = info["eval_ids"][2], info["eval_ids"][5]
    (images / garbage).write_bytes(b"this is not an image")
    (images / truncated).write_bytes((images / truncated).read_bytes()[:200])

    # A worker process decodes the images: its failure must still be one line naming the files.
    code, _, err = infer_cli(run, tmp_path / "data", capsys, "--workers", "1", "--batch-size", "3")
    assert code == 2
    last = err.strip().splitlines()[-1]  # above it: only the progress bar
    assert last.startswith("error: 2 unreadable eval image(s)") and "Traceback" not in err
    assert garbage in last and truncated in last and "--allow-unreadable" in last
    assert not (run / "submission.csv").exists() and not (run / "eval_meta.json").exists()

    code, out, _ = infer_cli(run, tmp_path / "data", capsys, "--workers", "1", "--allow-unreadable")
    assert code == 0 and garbage in out
    ids, ans = read_submission(run / "submission.csv")
    assert ids == info["eval_ids"]  # every row kept, in order
    meta = json.loads((run / "eval_meta.json").read_text())
    assert [u["ImageID"] for u in meta["unreadable"]] == sorted([garbage, truncated], key=ids.index)
    probs = np.load(run / "eval_probs.npy")
    bad = [ids.index(garbage), ids.index(truncated)]
    good = [i for i in range(len(ids)) if i not in bad]
    np.testing.assert_allclose(probs[bad], np.repeat(probs[good].mean(axis=0, keepdims=True), 2, axis=0), atol=1e-6)


def test_checkpoint_problems_are_one_line(tiny, tmp_path, capsys):
    root, _ = tiny
    data = root / "data"
    run = tmp_path / "run"
    code, _, err = infer_cli(run, data, capsys)
    assert code == 2 and "run directory" in err and len(err.strip().splitlines()) == 1

    make_checkpoint(run / "best.pt")
    good = (run / "best.pt").read_bytes()
    (run / "last.pt").write_bytes(good[: len(good) // 2])
    code, _, err = infer_cli(run, data, capsys, "--checkpoint", "last")
    assert code == 0 and err.startswith("warning: cannot read checkpoint") and "falling back" in err
    assert json.loads((run / "eval_meta.json").read_text())["checkpoint"].endswith("best.pt")

    (run / "best.pt").write_bytes(good[: len(good) // 2])
    code, _, err = infer_cli(run, data, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"cannot read checkpoint {run / 'best.pt'}" in lines[0]

    evil = {"format": "maskcls-checkpoint", "model_state": {}, "meta": argparse.Namespace(model="x")}
    torch.save(evil, run / "evil.pt")
    code, _, err = infer_cli(run, data, capsys, "--checkpoint", str(run / "evil.pt"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: refusing to load {run / 'evil.pt'}")

    code, _, err = infer_cli(run, data, capsys, "--checkpoint", "nothing.pt")
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1


def test_a_diverged_model_writes_no_submission(tiny, tmp_path, capsys):
    """NaN weights, or finite ones whose outputs overflow (the issue's --lr 1e30 run), are refused in one line."""
    root, _ = tiny
    run = tmp_path / "run"
    make_checkpoint(run / "best.pt")
    ckpt = torch.load(run / "best.pt", weights_only=True)
    fc = [k for k, v in ckpt["model_state"].items() if v.ndim == 2][-1]  # the classifier's weight matrix
    ckpt["model_state"][fc].fill_(3e38)  # finite, but every logit overflows to inf: softmax gives NaN
    torch.save(ckpt, run / "best.pt")
    code, _, err = infer_cli(run, root / "data", capsys)
    line = err.strip().splitlines()[-1]  # above it: only the progress bar
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert line == (
        "error: the model's probabilities are nan or inf for 16 of 16 images; retrain it with a lower --lr "
        "(or --clip-grad 1.0), or leave the run out"
    )
    assert not (run / "submission.csv").exists() and not (run / "eval_probs.npy").exists()

    ckpt["model_state"][fc][0, 0] = float("nan")
    torch.save(ckpt, run / "best.pt")
    code, _, err = infer_cli(run, root / "data", capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: {run / 'best.pt'} holds nan or inf weights ({fc}): its run diverged; retrain it with a lower --lr "
        "(or --clip-grad 1.0), or leave the run out"
    ]
    assert not (run / "submission.csv").exists()


def test_a_fold_all_run_predicts_with_every_fold(tiny, tmp_path, capsys):
    """--run runs/<name> of a --fold all run: each fold in turn, one eval_probs.npy each, then ensemble.py takes
    the parent; a fold without the checkpoint is refused, naming it, before anything is written (issue 25)."""
    root, info = tiny
    parent = tmp_path / "cv"
    for k in (0, 1):
        make_checkpoint(parent / f"fold{k}" / "best.pt", seed=k)
    code, out, err = infer_cli(parent, root / "data", capsys)
    assert code == 0, err
    assert f"{parent} is a --fold all run: predicting with each of its 2 folds in turn (fold0, fold1" in out
    assert f"ensemble them with: python ensemble.py --mode soft --runs {parent}" in out
    probs = [np.load(parent / f"fold{k}" / "eval_probs.npy") for k in (0, 1)]
    assert all(p.shape == (len(info["eval_ids"]), NUM_CLASSES) for p in probs) and not np.allclose(*probs)
    report = ensemble.main(ensemble.get_args_parser().parse_args(["--mode", "soft", "--runs", str(parent)]))
    assert [m["run"] for m in report["members"]] == ["cv/fold0", "cv/fold1"]

    make_checkpoint(tmp_path / "cv2" / "fold0" / "best.pt")
    (tmp_path / "cv2" / "fold1").mkdir()
    (tmp_path / "cv2" / "fold1" / "summary.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    code, _, err = infer_cli(tmp_path / "cv2", root / "data", capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "fold1 has no best.pt: it failed after 0" in err
    assert not (tmp_path / "cv2" / "fold0" / "eval_probs.npy").exists()
    code, _, err = infer_cli(parent, root / "data", capsys, "--checkpoint", str(parent / "fold0" / "best.pt"))
    assert code == 2 and "use --checkpoint best or last, or predict one fold with --run" in err


def test_an_unfinished_run_says_what_became_of_it(tiny, tmp_path, capsys):
    root, _ = tiny
    run = tmp_path / "run"
    run.mkdir()
    summary = {"status": "failed", "epochs_run": 0, "error": "maskcls.utils.UserError: no hub; pass --no-pretrained"}
    (run / "summary.json").write_text(json.dumps(summary))
    code, _, err = infer_cli(run, root / "data", capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {run} has no best.pt: it failed after 0 epoch(s): no hub; pass --no-pretrained")
    assert "train the run first" not in err

    make_checkpoint(run / "best.pt")  # killed in its second epoch: predicted, with a warning
    (run / "summary.json").write_text(json.dumps({"status": "running", "epochs_run": 1}))
    code, _, err = infer_cli(run, root / "data", capsys)
    assert code == 0 and err.startswith(f"warning: {run} stopped after 1 epoch(s) without recording why")


def test_crop_model_needs_eval_crops(tiny, tmp_path, capsys):
    root, _ = tiny
    make_checkpoint(tmp_path / "run" / "best.pt", image_dir="crops")
    code, _, err = infer_cli(tmp_path / "run", root / "data", capsys)
    assert code == 2 and "crop_faces.py" in err and len(err.strip().splitlines()) == 1


def test_answers_must_cover_every_row(tiny, tmp_path, capsys):
    root, info = tiny
    make_checkpoint(tmp_path / "run" / "best.pt")
    answers = tmp_path / "answers.csv"
    lines = (root / "data" / "eval" / "answers.csv").read_text().splitlines()
    answers.write_text("\n".join(lines[:-1]) + "\n")
    code, _, err = infer_cli(tmp_path / "run", root / "data", capsys, "--answers", str(answers))
    assert code == 2 and "no answer for 1 of 16" in err and len(err.strip().splitlines()) == 1


def test_duplicated_image_id_is_one_line(tiny, tmp_path, capsys):
    root, _ = tiny
    data = tmp_path / "data"
    (data / "eval").mkdir(parents=True)
    (data / "eval" / "images").symlink_to(root / "data" / "eval" / "images")
    lines = (root / "data" / "eval" / "info.csv").read_text().splitlines()
    (data / "eval" / "info.csv").write_text("\n".join([*lines, lines[2]]) + "\n")  # line 3's id again on line 18
    make_checkpoint(tmp_path / "run" / "best.pt")
    code, _, err = infer_cli(tmp_path / "run", data, capsys)
    image_id = lines[2].split(",")[0]
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{image_id} on lines 3, 18" in err and "keep one row per image" in err
    assert not (tmp_path / "run" / "submission.csv").exists()


def imported_modules(*argv: str) -> tuple[int, set[str]]:
    """Exit code and the modules ``python -X importtime ARGV`` imported (importtime writes one line per import)."""
    out = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=REPO, capture_output=True, text=True)
    found = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", out.stderr, re.M)
    return out.returncode, set(found)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["crop_faces.py", "inference.py"])
def test_help_and_bad_arguments_import_no_torch(script):
    """--help and a bad argument are answered before anything imports torch."""
    if script == "inference.py" and "torch" in imported_modules("-c", "import dataset")[1]:
        pytest.skip("inference.py imports dataset, which still imports torch at import on this branch")
    for arg, expected in (("--help", 0), ("--no-such-flag", 2)):
        code, modules = imported_modules(script, arg)
        assert code == expected and "argparse" in modules and "torch" not in modules, (script, arg)


# --------------------------------------------------------------------------- end to end: train.py, 2 folds
@pytest.fixture(scope="module")
def cv_runs(tiny):
    """train.py --fold 0 and --fold 1 of a 2-fold split, side by side (one thread each: 2 cores)."""
    root, _ = tiny
    procs, runs = [], []
    for fold in (0, 1):
        cmd = [sys.executable, "train.py", "--data-dir", str(root / "data"), "--model", "resnet10t", "--no-pretrained"]
        cmd += ["--resize", "32", "32", "--epochs", "1", "--workers", "0", "--batch-size", "16", "--folds", "2"]
        cmd += ["--fold", str(fold), "--name", f"r10t_fold{fold}", "--output-dir", str(root / "runs")]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )
        runs.append(root / "runs" / f"r10t_fold{fold}")
    for proc in procs:
        _, err = proc.communicate()
        assert proc.returncode == 0, err[-3000:]
    return root, runs


def _printed_f1(text: str, prefix: str) -> float:
    found = re.search(re.escape(prefix) + r".*?\bf1 ([0-9.]+)", text)
    assert found, text
    return float(found.group(1))


@pytest.mark.slow
def test_end_to_end_inference_and_ensemble(cv_runs, capsys):
    root, runs = cv_runs
    data, answers_csv = root / "data", root / "data" / "eval" / "answers.csv"
    ids = info_ids(data)
    answers = dict(line.split(",") for line in answers_csv.read_text().splitlines()[1:])
    truth = np.array([int(answers[i]) for i in ids])

    for run in runs:
        code, out, _ = infer_cli(run, data, capsys, "--tta", "flip", "--answers", str(answers_csv))
        assert code == 0
        sub_ids, ans = read_submission(run / "submission.csv")
        assert sub_ids == ids
        by_hand = metrics.classification_metrics(truth, ans)
        assert _printed_f1(out, "eval vs") == pytest.approx(by_hand["f1"], abs=5e-5)
        assert json.loads((run / "eval_meta.json").read_text())["metrics"]["f1"] == pytest.approx(by_hand["f1"])
        assert "wear/male/<30" in out  # the class distribution table

    probs = np.stack([np.load(run / "eval_probs.npy") for run in runs])
    for mode, expected in (("soft", probs.mean(axis=0).argmax(axis=1)), ("hard", hard_vote(probs))):
        out_csv = root / f"ensemble_{mode}.csv"
        argv = ["--mode", mode, "--runs-dir", str(root / "runs"), "--out", str(out_csv), "--answers", str(answers_csv)]
        capsys.readouterr()
        report = ensemble.main(ensemble.get_args_parser().parse_args(argv))
        printed = capsys.readouterr().out
        sub_ids, ans = read_submission(out_csv)
        assert sub_ids == ids and ans == expected.tolist()
        by_hand = metrics.classification_metrics(truth, ans)["f1"]
        assert report["metrics"]["f1"] == pytest.approx(by_hand)
        assert _printed_f1(printed, "ensemble:") == pytest.approx(by_hand, abs=5e-5)
        assert [m["run"] for m in report["members"]] == ["r10t_fold0", "r10t_fold1"]
        assert (root / f"ensemble_{mode}_report.json").is_file()


@pytest.mark.slow
def test_end_to_end_oof(cv_runs, capsys):
    root, runs = cv_runs
    out = root / "oof.csv"
    argv = ["--mode", "soft", "--oof", "--runs", *map(str, runs), "--out", str(out)]
    report = ensemble.main(ensemble.get_args_parser().parse_args(argv))

    # By hand: each fold's valid_preds.csv once (one model), argmax of p0..p17, folds concatenated.
    y, pred = [], []
    for run in runs:
        lines = [line.split(",") for line in (run / "valid_preds.csv").read_text().splitlines()]
        header, rows = lines[0], lines[1:]
        p = np.array([[float(r[header.index(f"p{i}")]) for i in range(18)] for r in rows])
        y += [int(r[header.index("label")]) for r in rows]
        pred += p.argmax(axis=1).tolist()
    by_hand = metrics.classification_metrics(y, pred)
    assert report["overall"]["f1"] == pytest.approx(by_hand["f1"])
    assert report["overall"]["n"] == len(y)
    assert [f["fold"] for f in report["folds"]] == ["fold0", "fold1"]
    (group,) = report["single_models"]  # scored on train.py's pred column: equals its cv numbers
    pred_col = [
        int(line.split(",")[3]) for run in runs for line in (run / "valid_preds.csv").read_text().splitlines()[1:]
    ]
    assert pred_col == pred
    assert group["group"] == "r10t" and group["f1"] == pytest.approx(by_hand["f1"])
    assert f"CV macro F1 of the ensemble: {by_hand['f1']:.4f}" in capsys.readouterr().out


@pytest.mark.slow
def test_bf16_and_decode_paths_agree_with_fp32(tiny, tmp_path):
    root, _ = tiny
    run = tmp_path / "run"
    make_checkpoint(run / "best.pt", head="multi")
    fp32 = infer(run, root / "data", "--amp", "off", "--batch-size", "3")
    reference = np.load(run / "eval_probs.npy")
    assert fp32["amp"] == "off"
    bf16 = infer(run, root / "data", "--amp", "--batch-size", "3", "--workers", "2")  # bare --amp = bf16
    assert bf16["amp"] == "bf16"
    np.testing.assert_allclose(np.load(run / "eval_probs.npy"), reference, atol=0.03)
    # CPU decodes between model calls; the DataLoader-worker way (a GPU's) gives the same rows in the same order
    ckpt = torch.load(run / "best.pt", weights_only=True)
    net = predict.build_model(ckpt, run / "best.pt", torch.device("cpu"))
    paths = [p for _, p in read_eval_table(root / "data")]
    meta = ckpt["meta"]
    args = (net, "multi", paths, SIZE, meta["mean"], meta["std"], torch.device("cpu"), "none", 4, 2, False)
    between, _, _, _ = predict.predict(*args, decode="between")
    workers, _, _, _ = predict.predict(*args, decode="workers")
    np.testing.assert_allclose(between, reference, atol=1e-6)
    np.testing.assert_allclose(workers, reference, atol=1e-6)


def test_resolve_amp_and_conv_bn_folding():
    cpu = torch.device("cpu")
    assert predict.resolve_amp("off", cpu) is False and predict.resolve_amp("bf16", cpu) is True
    assert predict.resolve_amp("auto", cpu) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    net = models.create_model(TINY_MODEL, head="single", pretrained=False).eval()
    x = torch.randn(2, 3, *SIZE)
    fused = predict.fuse_conv_bn(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), atol=1e-5, rtol=1e-4)

    class Untraceable(torch.nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent branch: torch.fx cannot trace it

    odd = Untraceable()
    assert predict.fuse_conv_bn(odd) is odd
