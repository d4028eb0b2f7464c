"""The face-crop script anyone writes first: crop_speed.py's baseline, runnable as a whole process.

    python bench/naive_crop.py IMAGES_DIR OUT_DIR [--boxes result.json]

Default ``MTCNN()``, ``detect`` on one PIL image at a time, the largest face grown by crop_faces.py's
default margins, ``crop`` + ``save`` (JPEG q95) under OUT_DIR with the same file name. No batching, no
threads, no manifest. ``--boxes`` writes ``{"boxes": {name: [x1, y1, x2, y2] or null}, "loop_seconds": s}``,
the detected boxes (crop_speed.py compares them with crop_faces.py's) and how long the loop over the
photos took (the rest of a run, timed from the shell, is its startup and exit). It imports only what such
a script would (facenet-pytorch, Pillow), so timing it from the shell measures what its user waits for.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from facenet_pytorch import MTCNN
from PIL import Image

# crop_faces.DEFAULT_MARGIN (left, top, right, bottom as fractions of the box), written out so this script
# imports nothing of the project.
MARGIN = (0.25, 0.45, 0.25, 0.25)
CENTRAL = (0.25, 0.2, 0.75, 0.65)  # where the naive loop crops when no face is found


def crop_all(mtcnn, files: list[Path], out_dir: Path) -> list[tuple | None]:
    """Detect, crop and save every photo of ``files``; the largest face box of each (None: none found)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    boxes = []
    for path in files:
        img = Image.open(path).convert("RGB")
        found, _ = mtcnn.detect(img)
        box = tuple(float(v) for v in found[0]) if found is not None else None  # MTCNN() sorts the largest first
        x1, y1, x2, y2 = box or (CENTRAL[0] * img.width, CENTRAL[1] * img.height, CENTRAL[2] * img.width,
                                 CENTRAL[3] * img.height)  # fmt: skip
        w, h = x2 - x1, y2 - y1
        region = (
            max(0, int(x1 - MARGIN[0] * w)),
            max(0, int(y1 - MARGIN[1] * h)),
            min(img.width, int(x2 + MARGIN[2] * w)),
            min(img.height, int(y2 + MARGIN[3] * h)),
        )
        img.crop(region).save(out_dir / path.name, quality=95)
        boxes.append(box)
    return boxes


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 4) or (len(argv) == 4 and argv[2] != "--boxes"):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    images, out_dir = Path(argv[0]), Path(argv[1])
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    mtcnn = MTCNN()
    start = time.perf_counter()
    boxes = crop_all(mtcnn, files, out_dir)
    loop_seconds = time.perf_counter() - start
    if len(argv) == 4:
        result = {"boxes": {p.name: b for p, b in zip(files, boxes)}, "loop_seconds": loop_seconds}
        Path(argv[3]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
