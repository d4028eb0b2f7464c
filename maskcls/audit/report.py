"""What the audit writes: label_audit.csv's rows, label_fixes_suggested.csv's rows and the contact sheet.

    utils.atomic_write_csv(out / "label_audit.csv", AUDIT_COLUMNS, suspect_rows(suspects, table))
    write_sheet(out / SHEET, contact_sheet(suspects, table, image_root, top=50, failed=[]))

audit_labels.py writes both files this way; maskcls.audit.scoring decides who is a suspect.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from maskcls import utils
from maskcls.audit.scoring import Suspect
from maskcls.audit.table import STEMS, Table
from maskcls.images import load_image
from maskcls.labels import MASK_NAMES, decode_label
from maskcls.utils import UserError

AUDIT_COLUMNS = ("id", "path", "field", "given", "suggested", "score", "flagged", "evidence")
SHEET = "label_audit_sheet.png"
THUMB = (96, 128)  # contact-sheet image size (width, height): the data's 3:4 portrait


def suspect_rows(suspects: Sequence[Suspect], table: Table) -> list[list]:
    return [
        [table.ids[s.person], s.path, s.field, s.given, s.suggested, f"{s.score:.6g}", int(s.flagged), s.evidence]
        for s in suspects
    ]


def suggested_fixes(suspects: Sequence[Suspect], table: Table) -> list[list[str]]:
    """label_fixes.csv rows (id,field,value) of the flagged suspects label_fixes.csv can express, in rank order."""
    return [[table.ids[s.person], s.field, s.value] for s in suspects if s.flagged and s.value is not None]


def _thumbnail(path: Path, failed: list[str]):
    """The image at contact-sheet size (aspect kept), or a grey tile saying it could not be read."""
    try:
        pixels = load_image(path, (THUMB[1], THUMB[0])).permute(1, 2, 0).numpy()
        return ImageOps.contain(Image.fromarray(pixels), THUMB)
    except UserError:
        failed.append(str(path))
        return Image.new("RGB", THUMB, (90, 90, 90))


def contact_sheet(suspects: Sequence[Suspect], table: Table, image_root: Path, top: int, failed: list[str]):
    """One band per person among the ``top`` suspects: what is suspected (given -> suggested), then its 7 images."""
    font = ImageFont.load_default(size=12)
    groups: dict[int, list[tuple[int, Suspect]]] = {}
    for rank, s in enumerate(suspects[:top], start=1):
        groups.setdefault(s.person, []).append((rank, s))
    pad, line = 4, 15
    width = len(STEMS) * (THUMB[0] + pad) + pad
    heights = [pad + line * (1 + len(g)) + THUMB[1] + 2 * line + pad for g in groups.values()]
    sheet = Image.new("RGB", (width, max(sum(heights), 1)), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for (i, group), height in zip(groups.items(), heights):
        draw.line([(0, y), (width, y)], fill=(160, 160, 160))
        draw.text((pad, y + pad), f"#{group[0][0]}  {table.ids[i]}  {table.folders[i]}", fill="black", font=font)
        for k, (rank, s) in enumerate(group, start=1):
            what = f"mask of {STEMS[s.images[0]]}" if s.field == "mask" else s.field
            note = (", flagged" if s.flagged else "") + (", already fixed" if s.already_fixed else "")
            text = f"#{rank} {what}: given {s.given} -> suggested {s.suggested}  (score {s.score:.3g}{note})"
            draw.text((pad, y + pad + line * k), text, fill=(180, 0, 0) if s.flagged else (90, 90, 90), font=font)
        marked = {k for _, s in group if s.field in ("mask", "mask_swap") for k in s.images}
        top_y = y + pad + line * (1 + len(group))
        for k, file in enumerate(table.files[i]):
            x = pad + k * (THUMB[0] + pad)
            thumb = _thumbnail(image_root / table.folders[i] / file, failed)
            sheet.paste(thumb, (x + (THUMB[0] - thumb.width) // 2, top_y + (THUMB[1] - thumb.height) // 2))
            if k in marked:
                draw.rectangle([x - 2, top_y - 2, x + THUMB[0] + 1, top_y + THUMB[1] + 1], outline=(220, 0, 0), width=3)
            mask = MASK_NAMES[decode_label(int(table.labels[i, k]))[0]]
            draw.text((x, top_y + THUMB[1] + 1), STEMS[k], fill="black", font=font)
            draw.text((x, top_y + THUMB[1] + 1 + line), f"= {mask}", fill=(90, 90, 90), font=font)
        y += height
    return sheet


def write_sheet(path: Path, sheet) -> None:
    with utils.atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", compress_level=1)  # zlib level 6 spends seconds on photo thumbnails
