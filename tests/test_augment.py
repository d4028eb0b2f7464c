"""augment.py's registry of batch augmentations: every registered one (shape, dtype, per-image seeds, off at p=0),
their flags through train.py's parser into Augment and config.json, the two added ones against torchvision, and
the default recipe byte-identical to the Augment before the registry (a frozen copy below)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import train  # noqa: E402
from maskcls import augment, config, sampler  # noqa: E402
from maskcls.augment import AUGMENTATIONS, Augment, Option, augmentation_flags, recipe_of  # noqa: E402
from maskcls.distributed import DistInfo  # noqa: E402
from maskcls.folds import Split  # noqa: E402
from maskcls.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from maskcls.registry import UnknownNameError  # noqa: E402
from maskcls.train_args import get_args_parser  # noqa: E402
from maskcls.utils import UserError  # noqa: E402


def _batch(n: int = 6, h: int = 40, w: int = 32, seed: int = 123) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


SEEDS = [0, 1, 2, 3, 17, 2**31 - 5]


# --------------------------------------------------------------------------- the default recipe, unchanged
class FrozenAugment:
    """augment.Augment as it was before the registry (commit e9e6a42), its arithmetic verbatim (scratch buffers
    and argument checks left out): the fused path must keep giving exactly these tensors."""

    def __init__(self, hflip=0.5, jitter=0.1, degrees=5.0, translate=0.05, scale=0.05):
        self.mean, self.std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.hflip, self.jitter, self.degrees, self.translate, self.scale = hflip, jitter, degrees, translate, scale
        self.geometric = hflip > 0 or degrees > 0 or translate > 0 or scale > 0

    def colour_matrix(self, mean_rgb, p):
        b = len(p)
        lo, width = 1 - self.jitter, 2 * self.jitter
        bright, contrast, sat = (lo + width * p[:, k] for k in (1, 2, 3))
        gray = torch.tensor((0.2989, 0.587, 0.114))
        mean_gray = (mean_rgb @ gray) / 255 if mean_rgb is not None else torch.zeros(b)
        sat_m = sat.view(b, 1, 1) * torch.eye(3) + (1 - sat).view(b, 1, 1) * gray.view(1, 1, 3)
        matrix = sat_m * (contrast * bright / 255).view(b, 1, 1) / self.std.view(1, 3, 1)
        offset = (((1 - contrast) * bright * mean_gray).view(b, 1) - self.mean) / self.std
        return matrix, offset

    def grid(self, p, h, w):
        b = len(p)
        flip = torch.where(p[:, 0] < self.hflip, -1.0, 1.0)
        angle = torch.deg2rad((2 * p[:, 4] - 1) * self.degrees)
        zoom = 1 + (2 * p[:, 5] - 1) * self.scale
        dx, dy = (2 * p[:, 6] - 1) * 2 * self.translate, (2 * p[:, 7] - 1) * 2 * self.translate
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        xs = ((torch.arange(w) * 2 + 1) / w - 1).view(1, 1, w)
        ys = ((torch.arange(h) * 2 + 1) / h - 1).view(1, h, 1)
        ax, bx = (flip * cos).view(b, 1, 1), (flip * sin * h / w).view(b, 1, 1)
        cx = (-flip * (cos * dx + sin * dy * h / w)).view(b, 1, 1)
        ay, by = (-sin * w / h).view(b, 1, 1), cos.view(b, 1, 1)
        cy = (sin * dx * w / h - cos * dy).view(b, 1, 1)
        grid = torch.empty(b, h, w, 2)
        torch.add(ax * xs, bx * ys + cx, out=grid[..., 0])
        torch.add(ay * xs, by * ys + cy, out=grid[..., 1])
        return grid

    def __call__(self, images, seeds):
        b, _, h, w = images.shape
        p = torch.stack([torch.rand(8, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        source = images.float()
        matrix, offset = self.colour_matrix(source.mean(dim=(2, 3)) if self.jitter > 0 else None, p)
        out = torch.empty_like(source)
        lo, hi = -self.mean / self.std, (1 - self.mean) / self.std
        for c in range(3):
            plane = torch.mul(source[:, 0], matrix[:, c, 0].view(b, 1, 1), out=out[:, c])
            plane.addcmul_(source[:, 1], matrix[:, c, 1].view(b, 1, 1))
            plane.addcmul_(source[:, 2], matrix[:, c, 2].view(b, 1, 1))
            plane.add_(offset[:, c].view(b, 1, 1)).clamp_(float(lo[c]), float(hi[c]))
        if not self.geometric:
            return out
        return torch.nn.functional.grid_sample(
            out, self.grid(p, h, w), mode="nearest", padding_mode="zeros", align_corners=False
        )


@pytest.mark.parametrize(
    "names, options, frozen",
    [
        (augment.DEFAULT_AUGMENT, {}, {}),
        (augment.DEFAULT_AUGMENT, {"jitter": 0.4, "rotate": 20, "translate": 0.1, "scale": 0.2},
         {"jitter": 0.4, "degrees": 20, "translate": 0.1, "scale": 0.2}),
        (("hflip", "jitter"), {}, {"degrees": 0, "translate": 0, "scale": 0}),
        ((), {}, {"hflip": 0, "jitter": 0, "degrees": 0, "translate": 0, "scale": 0}),
        (("affine",), {"rotate": 30}, {"hflip": 0, "jitter": 0, "degrees": 30}),
    ],
)  # fmt: skip
def test_the_fused_path_is_byte_identical_to_the_augment_before_the_registry(names, options, frozen):
    images = _batch()
    assert torch.equal(Augment(names=names, **options)(images, SEEDS), FrozenAugment(**frozen)(images, SEEDS))


def test_the_default_recipe_is_the_one_before_the_registry():
    args = get_args_parser().parse_args([])
    aug = Augment(**recipe_of(vars(args)))
    assert aug.names == ("hflip", "jitter", "affine") and not aug.steps
    assert (aug.hflip, aug.jitter, aug.rotate, aug.translate, aug.scale) == (0.5, 0.1, 5.0, 0.05, 0.05)


# --------------------------------------------------------------------------- every registered augmentation
def _flags_of(name: str) -> list[augment.AugmentFlag]:
    return [f for f in augmentation_flags() if f.augmentation == name]


def _off(name: str) -> dict:
    """The options that turn ``name`` off: its probability p at 0, or (no p) every strength at 0."""
    flags = _flags_of(name)
    return {f.dest: 0.0 for f in flags if f.option == "p"} or {f.dest: 0.0 for f in flags}


def _full(name: str) -> dict:
    return {f.dest: 1.0 for f in _flags_of(name) if f.option == "p"}


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_every_augmentation_keeps_the_batch_draws_per_image_and_is_off_at_p0(name):
    images = _batch()
    plain = Augment(names=())(images, SEEDS)
    assert not torch.equal(Augment(names=[name], **_full(name))(images, SEEDS), plain), f"{name} changed nothing"
    aug = Augment(names=[name])  # its defaults
    out = aug(images, SEEDS)
    assert out.shape == images.shape and out.dtype == torch.float32 and out.isfinite().all()
    assert torch.equal(aug(images, SEEDS), out)  # the same seeds, the same result
    assert not torch.equal(aug(images, [s + 100 for s in SEEDS]), out)
    # an image's result depends on its seed alone, not on the rest of the batch
    other = aug(images[[5, 1, 4]], [99, SEEDS[1], 98])
    assert torch.equal(other[1], out[1])
    assert torch.equal(Augment(names=[name], **_off(name))(images, SEEDS), plain)


def test_added_augmentations_draw_apart_from_the_fused_ones_and_each_other():
    images = _batch()
    fused = Augment()(images, SEEDS)
    both = Augment(names=[*augment.DEFAULT_AUGMENT, "erase", "blur"], erase=0.0, blur=0.0)(images, SEEDS)
    assert torch.equal(both, fused)  # listed but off: the fused draws are untouched
    erased = Augment(names=["erase"], erase=1.0)(images, SEEDS)
    assert torch.equal(Augment(names=["blur", "erase"], erase=1.0, blur=0.0)(images, SEEDS), erased)


def test_erase_fills_one_box_of_the_drawn_size():
    images = _batch(n=16, h=48, w=40)  # normalised pixels lie in [-2.2, 2.7]: none is the fill, 7
    plain = Augment(names=())(images, list(range(16)))
    out = Augment(names=["erase"], erase=1.0, erase_value=7.0)(images, list(range(16)))
    n_erased = 0
    for before, after in zip(plain, out, strict=True):
        filled = (after == 7.0).all(dim=0)
        assert torch.equal(after[:, ~filled], before[:, ~filled])
        if not filled.any():
            continue  # ten tries without a box that fits: torchvision leaves the image as it is too
        n_erased += 1
        rows, cols = filled.any(dim=1).nonzero().ravel(), filled.any(dim=0).nonzero().ravel()
        bh, bw = len(rows), len(cols)
        assert int(filled.sum()) == bh * bw and rows[-1] - rows[0] + 1 == bh  # one solid rectangle
        assert 0.02 * 48 * 40 / 1.6 <= bh * bw <= 0.33 * 48 * 40 * 1.6  # h and w are rounded to whole pixels
        assert 0.3 / 1.6 <= bh / bw <= 3.3 * 1.6
    assert n_erased >= 12
    noisy = Augment(names=["erase"], erase=1.0, erase_value="random")(images, list(range(16)))
    assert not torch.equal(noisy, plain) and abs(float((noisy - plain).mean())) < 1


def test_blur_is_torchvisions_gaussian_blur():
    from torchvision.transforms.v2 import functional as F

    images = _batch(n=3, h=24, w=20)
    plain = Augment(names=())(images, [4, 5, 6])
    out = Augment(names=["blur"], blur=1.0, blur_sigma=(1.2, 1.2))(images, [4, 5, 6])
    # sigma HI 1.2: kernel 2 * ceil(3.6) + 1 = 9 px, reflect padding, as torchvision's
    expected = F.gaussian_blur(plain, kernel_size=[9, 9], sigma=[1.2, 1.2])
    assert torch.allclose(out, expected, atol=1e-5)


# --------------------------------------------------------------------------- flags, config.json, errors
def test_the_flags_reach_augment(monkeypatch):
    argv = ["--augment", "hflip", "erase", "blur", "--hflip", "0.25", "--rotate", "7", "--erase", "0.3",
            "--erase-scale", "0.1", "0.2", "--erase-value", "random", "--blur-sigma", "0.5", "1"]  # fmt: skip
    args = get_args_parser().parse_args(argv)
    aug = Augment(**recipe_of(vars(args)))
    assert aug.names == ("hflip", "erase", "blur")
    assert (aug.hflip, aug.jitter, aug.rotate) == (0.25, 0.0, 0.0)  # jitter and affine not listed: off
    steps = {name: options for name, options, _ in aug.steps}
    assert steps["erase"] == {"p": 0.3, "scale": (0.1, 0.2), "ratio": (0.3, 3.3), "value": "random"}
    assert steps["blur"] == {"p": 0.5, "sigma": (0.5, 1.0)}
    assert repr(aug).startswith("Augment(hflip(p=0.25), erase(p=0.3, scale=0.1 0.2")
    assert Augment(**recipe_of(vars(get_args_parser().parse_args(["--augment", "none"])))).names == ()
    # train.py builds its loaders with that Augment
    seen = {}
    monkeypatch.setattr(sampler, "build_loaders", lambda *a, **kw: seen.update(kw))
    train.build_data(args, Split([], []), IMAGENET_MEAN, IMAGENET_STD, DistInfo(), torch.device("cpu"), None)
    assert repr(seen["augment"]) == repr(aug)


def test_config_json_records_the_recipe_and_reloads_it(tmp_path):
    argv = ["--augment", "jitter", "erase", "--erase-ratio", "0.5", "2", "--jitter", "0.2"]
    args = get_args_parser().parse_args(argv)
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"args": config.json_args(args)}))
    assert json.loads(saved.read_text())["args"]["erase_ratio"] == [0.5, 2.0]
    again = get_args_parser().parse_args(["--config", str(saved), "--erase", "0.1"])
    assert again.augment == ["jitter", "erase"] and again.jitter == 0.2 and again.erase == 0.1
    assert recipe_of(vars(again))["erase_ratio"] == (0.5, 2.0)
    # a config from before the registry has none of them: the default recipe
    old = {k: v for k, v in vars(args).items() if k != "augment" and k not in {f.dest for f in augmentation_flags()}}
    assert recipe_of(old) == recipe_of(vars(get_args_parser().parse_args([])))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--jitter", "2"], "--jitter must be in [0, 1], got 2"),
        (["--rotate", "-1"], "--rotate must be in [0, 180], got -1"),
        (["--erase-scale", "0.5", "0.1"], "--erase-scale LO HI needs 0 <= LO <= HI <= 1, got 0.5 0.1"),
        (["--augment", "erase", "hflip", "erase"], "--augment lists erase more than once"),
        (["--augment", "none", "erase"], "--augment none erase: none means no augmentation"),
    ],
)
def test_a_bad_option_is_one_line_naming_its_flag(argv, message, tmp_path):
    args = get_args_parser().parse_args([*argv, "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "r")])
    with pytest.raises(UserError) as error:
        config.check_args(args)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_an_unknown_augmentation_is_one_line(tmp_path):
    with pytest.raises(UnknownNameError, match="valid augmentations: hflip, jitter, affine, erase, blur"):
        Augment(names=["hflip", "cutout"])
    proc = subprocess.run(
        [sys.executable, "train.py", "--augment", "hflip", "cutout", "--data-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown augmentation 'cutout'; valid augmentations: hflip, jitter, affine, erase, blur"
    ]


def test_an_option_of_an_augmentation_not_listed_is_a_warning(capsys):
    recipe = recipe_of({"augment": ["hflip"], "erase": 0.3, "blur": 0.5}, warn=True)
    assert recipe["names"] == ("hflip",)
    err = capsys.readouterr().err
    assert "--erase 0.3 changes nothing" in err and "--augment hflip erase" in err and "--blur" not in err


# --------------------------------------------------------------------------- adding one is one place
@pytest.fixture
def scratch_registry():
    saved = dict(AUGMENTATIONS._entries)
    yield
    AUGMENTATIONS._entries.clear()  # the registry is global: leave it as the other tests know it
    AUGMENTATIONS._entries.update(saved)


def test_one_decorated_function_is_an_augmentation_with_its_flag(scratch_registry):
    @augment.register_augmentation("invert", p=Option(0.5, "invert: probability per image"))
    def invert(images, rngs, *, p):
        for i, _ in augment.chosen(rngs, p, 0):
            images[i] = -images[i]
        return images

    args = get_args_parser().parse_args(["--augment", "hflip", "invert", "--invert", "1"])
    images = _batch()
    assert torch.equal(Augment(**recipe_of(vars(args)))(images, SEEDS), -Augment(names=["hflip"])(images, SEEDS))
    with pytest.raises(TypeError, match="must take"):
        augment.register_augmentation("broken", p=Option(0.5, "p"))(lambda images, rngs, q: images)
    with pytest.raises(ValueError, match="--erase already sets"):
        augment.register_augmentation("erase2", p=Option(0.5, "p", flag="--erase"))
