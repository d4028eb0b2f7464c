"""The competition's labels, in one place: the 18-class encoding, the mask/gender/age names and groups, the
seven image names of a person folder, and which file names are images.

    class = mask*6 + gender*3 + age_group    mask wear=0 / incorrect=1 / not worn=2, gender male=0 / female=1,
                                              age <30=0 / 30..threshold-1=1 / >=threshold=2 (threshold 60)

Pure functions of ints and numpy arrays; nothing here reads a file.
"""

from __future__ import annotations

import os
from enum import IntEnum

import numpy as np

from maskcls.utils import UserError

NUM_CLASSES = 18
HEAD_SIZES = (3, 2, 3)  # mask, gender, age logits of the multi head
HEAD_NAMES = ("mask", "gender", "age")
DEFAULT_OLD_THRESHOLD = 60  # the competition's age split; training may use 55-58 (see docs/DATASET.md)


class Mask(IntEnum):
    WEAR = 0
    INCORRECT = 1
    NOT_WEAR = 2


class Gender(IntEnum):
    MALE = 0
    FEMALE = 1


class AgeGroup(IntEnum):
    YOUNG = 0  # < 30
    MIDDLE = 1  # 30 .. old_threshold-1
    OLD = 2  # >= old_threshold


MASK_NAMES = ("wear", "incorrect", "not_wear")
GENDER_NAMES = ("male", "female")
GENDER_BY_NAME = {name: Gender(i) for i, name in enumerate(GENDER_NAMES)}

# The 7 files every train person folder holds, and the mask label each stem means.
MASK_BY_STEM = {
    "mask1": Mask.WEAR,
    "mask2": Mask.WEAR,
    "mask3": Mask.WEAR,
    "mask4": Mask.WEAR,
    "mask5": Mask.WEAR,
    "incorrect_mask": Mask.INCORRECT,
    "normal": Mask.NOT_WEAR,
}
REQUIRED_STEMS = tuple(sorted(MASK_BY_STEM))  # record order inside a person: sorted stems


def _is_scalar(x) -> bool:
    return np.ndim(x) == 0


def encode_label(mask, gender, age_group):
    """18-class label ``mask*6 + gender*3 + age_group``; ints (or IntEnums) or numpy arrays."""
    if _is_scalar(mask) and _is_scalar(gender) and _is_scalar(age_group):
        mask, gender, age_group = int(mask), int(gender), int(age_group)
        if not (0 <= mask < 3 and 0 <= gender < 2 and 0 <= age_group < 3):
            raise ValueError(f"label parts out of range: mask={mask} gender={gender} age_group={age_group}")
        return mask * 6 + gender * 3 + age_group
    mask, gender, age_group = (np.asarray(a, dtype=np.int64) for a in (mask, gender, age_group))
    if (
        np.any((mask < 0) | (mask > 2))
        or np.any((gender < 0) | (gender > 1))
        or np.any((age_group < 0) | (age_group > 2))
    ):
        raise ValueError("label parts out of range (mask 0..2, gender 0..1, age_group 0..2)")
    return mask * 6 + gender * 3 + age_group


def decode_label(label):
    """(mask, gender, age_group) of an 18-class label; an int gives ints, an array gives arrays."""
    if _is_scalar(label):
        label = int(label)
        if not 0 <= label < NUM_CLASSES:
            raise ValueError(f"label {label} is not in 0..{NUM_CLASSES - 1}")
        return label // 6, (label // 3) % 2, label % 3
    label = np.asarray(label, dtype=np.int64)
    if np.any((label < 0) | (label >= NUM_CLASSES)):
        raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}")
    return label // 6, (label // 3) % 2, label % 3


def class_column(targets):
    """The 18-class labels of a batch's training targets (numpy array or tensor): (N,) targets are the labels;
    the years head's (N, 2) targets are [class, written age] rows (datasets.TrainDataset ``with_ages``), so
    that CutMix/MixUp's row permutation carries each age with its class."""
    return targets[:, 0] if targets.ndim == 2 else targets


def _check_threshold(old_threshold: int) -> None:
    if not 30 < int(old_threshold) <= 120:
        raise UserError(f"--old-threshold must be in 31..120 (got {old_threshold}); the competition uses 60")


def age_group(age, old_threshold: int = DEFAULT_OLD_THRESHOLD):
    """0 for age < 30, 1 for age < old_threshold, else 2; ints or numpy arrays."""
    _check_threshold(old_threshold)
    if _is_scalar(age):
        age = int(age)
        return 0 if age < 30 else 1 if age < old_threshold else 2
    age = np.asarray(age)
    return np.where(age < 30, 0, np.where(age < old_threshold, 1, 2)).astype(np.int64)


def age_group_names(old_threshold: int = DEFAULT_OLD_THRESHOLD) -> list[str]:
    _check_threshold(old_threshold)
    return ["<30", f"30-{old_threshold - 1}", f">={old_threshold}"]


def class_names(old_threshold: int = DEFAULT_OLD_THRESHOLD) -> list[str]:
    """The 18 class names in label order, e.g. "wear/male/<30", "incorrect/female/30-59"."""
    ages = age_group_names(old_threshold)
    return [f"{m}/{g}/{a}" for m in MASK_NAMES for g in GENDER_NAMES for a in ages]


def mask_from_stem(stem: str) -> Mask:
    """mask1..mask5 -> WEAR, incorrect_mask -> INCORRECT, normal -> NOT_WEAR (case-insensitive)."""
    try:
        return MASK_BY_STEM[stem.lower()]
    except KeyError:
        raise ValueError(f"{stem!r} is not a mask image name; expected one of {', '.join(REQUIRED_STEMS)}") from None


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def is_image_name(name: str) -> bool:
    """True for a .jpg/.jpeg/.png name (any case). Every dot-file is refused: macOS ``._*`` resource forks
    and hidden files are never photos, and both the tables and the cropper skip them by this one rule."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
