"""The shared plumbing: the strict registry, atomic writes, CSV reading and image opening."""

import os
import stat

import pytest

from maskcls import utils
from maskcls.registry import Registry, UnknownNameError


def test_registry_is_case_insensitive_with_aliases():
    reg = Registry("thing")

    @reg.register("Alpha", "a1")
    def alpha():
        return "alpha"

    assert reg.get("ALPHA") is alpha and reg.get("A1") is alpha
    assert "alpha" in reg and "beta" not in reg
    assert reg.canonical("a1") == "Alpha"
    assert reg.names() == ["Alpha"] and len(reg) == 1


def test_registry_rejects_duplicates_in_any_case():
    reg = Registry("thing")
    reg.register("Alpha", "a1")(lambda: None)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("ALPHA")(lambda: None)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("other", "A1")(lambda: None)


def test_unknown_name_lists_valid_names():
    reg = Registry("thing")
    reg.register("Alpha")(lambda: None)
    reg.register("Beta")(lambda: None)
    with pytest.raises(UnknownNameError, match="valid things: Alpha, Beta"):
        reg.get("gamma")


def test_atomic_write_gives_normal_permissions(tmp_path):
    target = tmp_path / "out.csv"
    utils.atomic_write_csv(target, ["a", "b"], [[1, 2]])
    assert target.read_text() == "a,b\n1,2\n"
    mode = stat.S_IMODE(os.stat(target).st_mode)
    assert mode == 0o666 & ~utils._UMASK  # not mkstemp's 0600: other users of a shared server can read results


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), utils.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_unique_dir_never_reuses_a_name(tmp_path):
    first = utils.unique_dir(tmp_path, "run")
    second = utils.unique_dir(tmp_path, "run")
    assert (first.name, second.name) == ("run", "run_2")


def test_read_csv_rows_names_missing_columns_and_extra_cells(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,age\n1,20\n")
    with pytest.raises(utils.UserError, match="lacks column"):
        utils.read_csv_rows(path, ["id", "gender"])
    path.write_text("id,age\n1,20,x\n")
    with pytest.raises(utils.UserError, match="line 2 has more cells"):
        utils.read_csv_rows(path, ["id"])


def test_read_csv_rows_strips_fills_and_refuses_other_encodings(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\ufeffImageID , ans\n\n a.jpg , 3\nb.jpg\n")  # BOM, spaces, a blank line, a short row
    assert utils.read_csv_rows(path, ["ImageID", "ans"]) == [
        {"ImageID": "a.jpg", "ans": "3"},
        {"ImageID": "b.jpg", "ans": ""},
    ]
    path.write_bytes("ImageID,ans\n한.jpg,1\n".encode("cp949"))  # Excel's Korean default
    with pytest.raises(utils.UserError, match="is not UTF-8 text .answers.; save it as a UTF-8 CSV"):
        utils.read_csv_rows(path, ["ImageID", "ans"], "answers")
    path.write_text("")
    with pytest.raises(utils.UserError, match="is empty"):
        utils.read_csv_rows(path, ["ImageID"])
    with pytest.raises(utils.UserError, match="not found; check --data-dir"):
        utils.read_csv_rows(tmp_path / "missing.csv", ["ImageID"])


def test_read_csv_table_keeps_line_numbers_and_skips_comments(tmp_path):
    path = tmp_path / "fixes.csv"
    path.write_text("# a comment\nid,field,value\n\n000001,gender,female\n000002,age\n")
    header, rows = utils.read_csv_table(path, ("id", "field", "value"), "label fixes", comments=True)
    assert header == ["id", "field", "value"]
    assert [(n, row["id"], row["value"], k) for n, row, k in rows] == [
        (4, "000001", "female", 3),
        (5, "000002", None, 2),
    ]


def test_open_rgb_scales_16_bit_grayscale_and_names_bad_files(tmp_path):
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 65535, 24 * 16).reshape(24, 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # PNG mode I;16: convert("RGB") alone makes it white
    rgb = np.asarray(utils.open_rgb(tmp_path / "deep.png"))
    assert rgb.shape == (24, 16, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[..., 0].astype(int) - np.rint(ramp / 257)).max() == 0 and (rgb[..., 0] == rgb[..., 2]).all()
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name, reason in (("empty.jpg", "empty file"), ("missing.jpg", "file not found")):
        with pytest.raises(utils.UserError) as e:
            utils.open_rgb(tmp_path / name)
        assert e.value.reason == reason and str(e.value).startswith(f"cannot read image {tmp_path / name}: {reason}")
    assert type(e.value) is utils.UserError  # DataLoader workers re-raise it by class name: train.py expects this one
