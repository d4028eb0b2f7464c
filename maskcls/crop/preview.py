"""The contact sheet of a split's crops (``crop_faces.py --preview N``): random crops labelled with their method."""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

from maskcls.crop.manifest import Row
from maskcls.utils import atomic_path

PREVIEW_NAME = "crops_preview.png"


def write_preview(split_dir: Path, rows: dict[str, Row], n: int, seed: int = 0, cell: int = 160) -> Path:
    """A contact sheet of ``n`` random crops, each labelled with its method (and probability)."""
    done = [rows[rel] for rel in sorted(rows) if rows[rel].method != "error" and (split_dir / "crops" / rel).is_file()]
    picks = random.Random(seed).sample(done, min(n, len(done)))
    colors = {"mtcnn": (40, 160, 40), "fallback": (220, 120, 0), "override": (40, 90, 220)}
    cols = max(1, math.ceil(math.sqrt(len(picks) * 0.75)))
    label_h = 14
    sheet = Image.new("RGB", (cols * cell, max(1, math.ceil(len(picks) / cols)) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(picks):
        x, y = (i % cols) * cell, (i // cols) * (cell + label_h)
        with Image.open(split_dir / "crops" / row.path) as im:
            im = im.convert("RGB")
            im.thumbnail((cell - 4, cell - 4))
            sheet.paste(im, (x + (cell - im.width) // 2, y + label_h + (cell - im.height) // 2))
        text = row.method if row.prob is None else f"{row.method} {row.prob:.2f}"
        draw.rectangle((x, y, x + cell - 1, y + label_h - 1), fill=colors.get(row.method, (0, 0, 0)))
        draw.text((x + 3, y + 1), text, fill="white")
    path = split_dir / PREVIEW_NAME
    with atomic_path(path) as tmp:
        sheet.save(tmp, "PNG")
    return path
