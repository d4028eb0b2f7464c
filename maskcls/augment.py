"""Training augmentation of whole batches on the training device: Augment (flip, colour jitter, small affine,
every image from its own seed) and CutMix / MixUp with the loss of a mixed batch.

    augment = Augment(mean, std)                     # uint8 (B, 3, H, W) + one seed per image -> float32
    images = augment(batch, seeds)
    images, targets_a, targets_b, lam = mix_batch(images, labels, rng, cutmix_p=0.5)
    loss = mixed_loss(criterion, model(images), targets_a, targets_b, lam)

A new augmentation goes into Augment (a parameter drawn in ``params``, applied in ``__call__``) when it
works per image, or beside mix_batch when it mixes images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from maskcls.data import IMAGENET_MEAN, IMAGENET_STD

# Luma weights of torchvision's rgb_to_grayscale, used by its contrast and saturation adjustments.
_GRAY = (0.2989, 0.587, 0.114)


class Augment:
    """Training augmentation of a whole uint8 batch at once -> normalised float32, same (H, W).

    Per image: horizontal flip, colour jitter (brightness, contrast, saturation: torchvision's
    formulas, in that fixed order, clamped once at the end), and a small random affine (rotation,
    translation, scale; nearest sampling like v2.RandomAffine's default, outside filled with the mean
    colour). Each image's draw comes from its own ``seed``, so a batch's result does not depend on
    which worker built it or what ran before, and a resumed run replays the same epochs.

    Why batched: the whole batch is a handful of tensor ops (one per-image 3x3 colour matrix that
    also does the scaling and normalisation, one grid_sample), where torchvision's per-image
    transforms spent most of their time dispatching small ops (bench/loader_speed.py).
    """

    N_PARAMS = 8  # flip, brightness, contrast, saturation, angle, scale, dx, dy

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        hflip: float = 0.5,
        jitter: float = 0.1,
        degrees: float = 5.0,
        translate: float = 0.05,
        scale: float = 0.05,
    ):
        for name, value in (("hflip", hflip), ("jitter", jitter), ("translate", translate), ("scale", scale)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0 <= degrees <= 180:
            raise ValueError(f"degrees must be in [0, 180], got {degrees}")
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        if self.mean.shape != (3,) or self.std.shape != (3,) or bool((self.std <= 0).any()):
            raise ValueError(f"mean and std need 3 values each, std > 0 (got {mean}, {std})")
        self.hflip, self.jitter = float(hflip), float(jitter)
        self.degrees, self.translate, self.scale = float(degrees), float(translate), float(scale)
        self._buffers: dict[tuple, torch.Tensor] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_buffers": {}}  # scratch space is per process, not worth pickling

    def __repr__(self) -> str:
        return (
            f"Augment(hflip={self.hflip}, jitter={self.jitter}, degrees={self.degrees}, "
            f"translate={self.translate}, scale={self.scale})"
        )

    @property
    def geometric(self) -> bool:
        return self.hflip > 0 or self.degrees > 0 or self.translate > 0 or self.scale > 0

    def params(self, seeds: Sequence[int]) -> torch.Tensor:
        """(B, 8) uniform [0, 1) draws on the CPU, row i from ``seeds[i]`` alone."""
        rows = [torch.rand(self.N_PARAMS, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(rows) if rows else torch.empty(0, self.N_PARAMS)

    def _buffer(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        # Reused scratch tensors: on CPU a fresh multi-MB tensor per batch costs page faults comparable to the work.
        key = (name, shape, device)
        if key not in self._buffers:
            self._buffers = {k: v for k, v in self._buffers.items() if k[0] != name}
            self._buffers[key] = torch.empty(shape, dtype=torch.float32, device=device)
        return self._buffers[key]

    def colour_matrix(self, mean_rgb: torch.Tensor | None, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image (3x3 matrix, offset) taking 0..255 RGB to jittered, normalised RGB.

        ``mean_rgb``: (B, 3) mean 0..255 colour of each image (needed by contrast; None without jitter).
        """
        b, device = len(p), p.device
        lo, width = 1 - self.jitter, 2 * self.jitter
        bright, contrast, sat = (lo + width * p[:, k] for k in (1, 2, 3))
        gray = torch.tensor(_GRAY, device=device)
        mean, std = self.mean.to(device), self.std.to(device)
        # contrast blends with the mean gray level of the (brightened) image: b * mean(gray(x))
        mean_gray = (mean_rgb @ gray) / 255 if mean_rgb is not None else torch.zeros(b, device=device)
        # saturation: s * I + (1 - s) * 1 gray^T; its rows sum to 1, so it leaves the contrast offset alone
        sat_m = sat.view(b, 1, 1) * torch.eye(3, device=device) + (1 - sat).view(b, 1, 1) * gray.view(1, 1, 3)
        matrix = sat_m * (contrast * bright / 255).view(b, 1, 1) / std.view(1, 3, 1)
        offset = (((1 - contrast) * bright * mean_gray).view(b, 1) - mean) / std
        return matrix, offset

    def grid(self, p: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, H, W, 2) sampling grid (grid_sample's normalised coordinates) of each image's flip + affine."""
        b, (h, w), device = len(p), size, p.device
        flip = torch.where(p[:, 0] < self.hflip, -1.0, 1.0)
        angle = torch.deg2rad((2 * p[:, 4] - 1) * self.degrees)
        zoom = 1 + (2 * p[:, 5] - 1) * self.scale
        dx, dy = (2 * p[:, 6] - 1) * 2 * self.translate, (2 * p[:, 7] - 1) * 2 * self.translate  # normalised units
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # output -> input: undo the translation, then the rotation and zoom (in pixel units, hence the
        # aspect ratios), then the flip
        xs = ((torch.arange(w, device=device) * 2 + 1) / w - 1).view(1, 1, w)
        ys = ((torch.arange(h, device=device) * 2 + 1) / h - 1).view(1, h, 1)
        ax, bx = (flip * cos).view(b, 1, 1), (flip * sin * h / w).view(b, 1, 1)
        cx = (-flip * (cos * dx + sin * dy * h / w)).view(b, 1, 1)
        ay, by = (-sin * w / h).view(b, 1, 1), cos.view(b, 1, 1)
        cy = (sin * dx * w / h - cos * dy).view(b, 1, 1)
        grid = self._buffer("grid", (b, h, w, 2), device)
        torch.add(ax * xs, bx * ys + cx, out=grid[..., 0])
        torch.add(ay * xs, by * ys + cy, out=grid[..., 1])
        return grid

    def __call__(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """``images``: uint8 (B, 3, H, W) on any device; the result is float32 on the same device."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"need a uint8 (B, 3, H, W) batch, got {tuple(images.shape)} {images.dtype}")
        if len(seeds) != len(images):
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for {len(images)} images")
        b, _, h, w = images.shape
        device = images.device
        p = self.params(seeds).to(device)
        source = self._buffer("source", tuple(images.shape), device).copy_(images)
        matrix, offset = self.colour_matrix(source.mean(dim=(2, 3)) if self.jitter > 0 else None, p)
        out = self._buffer("colour", tuple(images.shape), device) if self.geometric else torch.empty_like(source)
        lo, hi = -self.mean / self.std, (1 - self.mean) / self.std
        for c in range(3):  # out_c = clamp(sum_k M[c, k] * x_k + o_c): jitter, scaling and normalisation at once
            plane = torch.mul(source[:, 0], matrix[:, c, 0].view(b, 1, 1), out=out[:, c])
            plane.addcmul_(source[:, 1], matrix[:, c, 1].view(b, 1, 1))
            plane.addcmul_(source[:, 2], matrix[:, c, 2].view(b, 1, 1))
            plane.add_(offset[:, c].view(b, 1, 1)).clamp_(float(lo[c]), float(hi[c]))
        if not self.geometric:
            return out
        # zero padding in normalised space = the mean colour outside the image
        return torch.nn.functional.grid_sample(
            out, self.grid(p, (h, w)), mode="nearest", padding_mode="zeros", align_corners=False
        )


# --------------------------------------------------------------------------- CutMix / MixUp (pure)
def cutmix_batch(
    images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, mode: str = "strip", beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Paste a region of a shuffled copy of the batch into it; returns (mixed, targets_a, targets_b, lam).

    ``strip`` (the retrospective's): a vertical band over the full height whose width ratio is
    Beta(beta, beta), placed uniformly so it always lies inside the image -- a face is centred, so a
    band mixes half-faces rather than a corner of background. ``box``: the usual CutMix rectangle
    (area ratio Beta, centre uniform, clipped at the border). ``lam`` is the share of the ORIGINAL
    image left, from the pixels actually pasted (the retrospective's snippet weighted the targets the
    wrong way round and measured W on the height axis). ``images`` is not modified.
    """
    n, _, h, w = images.shape
    perm = torch.from_numpy(rng.permutation(n)).to(images.device)
    ratio = float(rng.beta(beta, beta))
    if mode == "strip":
        cut_w = min(w, int(round(w * ratio)))
        x1 = int(rng.integers(0, w - cut_w + 1))
        x2, y1, y2 = x1 + cut_w, 0, h
    elif mode == "box":
        side = math.sqrt(ratio)
        cut_w, cut_h = int(w * side), int(h * side)
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    else:
        raise ValueError(f"unknown cutmix mode {mode!r}; use strip or box")
    mixed = images.clone()
    mixed[:, :, y1:y2, x1:x2] = images[perm, :, y1:y2, x1:x2]
    lam = 1.0 - (x2 - x1) * (y2 - y1) / (w * h)
    return mixed, targets, targets[perm], lam


def mixup_batch(
    images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """MixUp: lam * images + (1 - lam) * shuffled images, lam ~ Beta(alpha, alpha)."""
    perm = torch.from_numpy(rng.permutation(images.shape[0])).to(images.device)
    lam = float(rng.beta(alpha, alpha))
    return lam * images + (1.0 - lam) * images[perm], targets, targets[perm], lam


def mix_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    rng: np.random.Generator,
    cutmix_p: float = 0.0,
    cutmix_mode: str = "strip",
    cutmix_beta: float = 1.0,
    mixup_alpha: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix with probability ``cutmix_p``, else MixUp when ``mixup_alpha`` > 0, else unchanged (lam 1)."""
    # Always draw the coin, so the random stream does not depend on which branch the previous batch took.
    coin = rng.random()
    if coin < cutmix_p:
        return cutmix_batch(images, targets, rng, cutmix_mode, cutmix_beta)
    if mixup_alpha > 0:
        return mixup_batch(images, targets, rng, mixup_alpha)
    return images, targets, targets, 1.0


def mixed_loss(criterion: nn.Module, logits, targets_a, targets_b, lam: float) -> torch.Tensor:
    if lam >= 1.0:
        return criterion(logits, targets_a)
    return lam * criterion(logits, targets_a) + (1.0 - lam) * criterion(logits, targets_b)
