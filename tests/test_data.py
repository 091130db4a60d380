"""Tests for derma_nb.data: reading/validating HAM10000 copies, layouts, lesion split, decode-once cache, loaders."""
from __future__ import annotations

import io
import json
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from derma_nb.cache import BatchAugment, cache_loader, dihedral, load_prepared, prepare_dataset, unit_batch
from derma_nb.config import CLASSES, SampleParams
from derma_nb.data import DataError, DataReport, decode_for_model, load_rgb, read_metadata, scan_dataset
from derma_nb.sample import is_synthetic, make_synthetic_sample
from derma_nb.split import KNOWN_DUPLICATES, check_lesion_disjoint, lesion_groups, lesion_split, split_summary

META = "HAM10000_metadata.csv"
SIZE = 16
REAL = Path(__file__).resolve().parents[2] / "shared/data/ham10000"


# ---------------------------------------------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    "A small synthetic sample (4 lesions per class, 64x48): never modified, copy it with `sample`."
    return make_synthetic_sample(tmp_path_factory.mktemp("pristine") / "ds", lesions={c: 4 for c in CLASSES},
                                 width=64, height=48)


@pytest.fixture
def sample(pristine, tmp_path) -> Path:
    "A private copy of the small sample, free to break."
    return Path(shutil.copytree(pristine, tmp_path / "ds"))


@pytest.fixture(scope="module")
def prepared(pristine, tmp_path_factory):
    "The small sample prepared at SIZE px."
    return prepare_dataset(pristine, tmp_path_factory.mktemp("prep") / "out", image_size=SIZE)


def meta_df(ds: Path) -> pd.DataFrame:
    return pd.read_csv(ds / META, dtype=str, keep_default_na=False)


def write_meta(ds: Path, df: pd.DataFrame):
    df.to_csv(ds / META, index=False)


def img_path(ds: Path, image_id: str) -> Path:
    return ds / "images" / f"{image_id}.jpg"


def line_of(df: pd.DataFrame, i: int) -> int:
    "File line number of data row i (header is line 1)."
    return i + 2


def n_rows(ds: Path) -> int:
    return len(meta_df(ds))


def multi_image_lesion(df: pd.DataFrame) -> str:
    counts = df.lesion_id.value_counts()
    return counts[counts > 1].index[0]


def single_image_row(df: pd.DataFrame) -> int:
    "Index of a row whose lesion has > 1 image (so breaking it never drops a lesion)."
    lesion = multi_image_lesion(df)
    return int(df.index[df.lesion_id == lesion][-1])


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stat_key(out: Path):
    st = (out / "images.npy").stat()
    return st.st_ino, st.st_mtime_ns


def rng_bytes(n: int, seed: int = 0) -> bytes:
    b = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    return b"\x00" + b[1:]  # never a JPEG/PNG magic number


# ---------------------------------------------------------------------------------------------------------------
# synthetic sample
# ---------------------------------------------------------------------------------------------------------------
def test_sample_is_deterministic(tmp_path):
    kw = dict(lesions={"mel": 3, "nv": 4, "df": 2}, width=48, height=40)
    a = file_bytes(make_synthetic_sample(tmp_path / "a", seed=7, **kw))
    b = file_bytes(make_synthetic_sample(tmp_path / "b", seed=7, **kw))
    c = file_bytes(make_synthetic_sample(tmp_path / "c", seed=8, **kw))
    assert len(a) > 3 and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), "same seed must give byte-identical files"
    assert any(a[k] != c.get(k) for k in a if k.endswith(".jpg")), "different seed must give different images"


def test_sample_is_labeled_synthetic(pristine):
    meta = pd.read_csv(pristine / META)
    assert list(meta.columns) == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    assert (meta.dx_type == "synthetic").all()
    assert is_synthetic(meta)
    assert "SYNTHETIC" in (pristine / "SYNTHETIC.md").read_text(encoding="utf-8")
    assert sorted(p.stem for p in (pristine / "images").glob("*.jpg")) == sorted(meta.image_id)
    with Image.open(img_path(pristine, meta.image_id[0])) as im:
        assert (im.size, im.mode, im.format) == ((64, 48), "RGB", "JPEG")


@pytest.fixture(scope="module")
def default_sample(tmp_path_factory) -> Path:
    # default lesion counts and seed; small pixels (the lesion/image counts don't depend on the size)
    return make_synthetic_sample(tmp_path_factory.mktemp("default") / "ds", width=48, height=36)


def test_default_sample_counts(default_sample):
    meta = pd.read_csv(default_sample / META)
    lesions = meta.groupby("dx").lesion_id.nunique()
    assert set(lesions.index) == set(CLASSES)
    assert (lesions >= 30).all(), lesions.to_dict()
    assert lesions.to_dict() == SampleParams().lesions
    per_lesion = meta.lesion_id.value_counts()
    assert (per_lesion > 1).sum() >= 50  # several lesions have more than one image
    assert per_lesion.max() <= 4
    assert meta.groupby("lesion_id").dx.nunique().max() == 1
    assert meta.image_id.is_unique


# ---------------------------------------------------------------------------------------------------------------
# metadata problems
# ---------------------------------------------------------------------------------------------------------------
def test_clean_sample_reads(pristine):
    files = scan_dataset(pristine)
    rep = DataReport()
    meta = read_metadata(files.metadata, report=rep)
    assert len(meta) == n_rows(pristine) == len(files.images)
    assert rep.skipped == [] and rep.rows == len(meta)
    assert meta.line.tolist() == list(range(2, len(meta) + 2))
    assert (meta.label == meta.dx.map(CLASSES.index)).all()
    assert files.duplicates_ignored == []


def test_missing_required_column(sample):
    write_meta(sample, meta_df(sample).drop(columns="dx"))
    with pytest.raises(DataError, match=re.escape(str(sample / META)) + r": missing required column\(s\) \['dx'\]"):
        read_metadata(sample / META)


def test_unknown_dx_names_line_and_value(sample):
    df = meta_df(sample)
    df.loc[3, "dx"] = "melanoma"
    write_meta(sample, df)
    with pytest.raises(DataError, match=re.escape(str(sample / META)) + r": line 5: dx 'melanoma' is not one of"):
        read_metadata(sample / META)


def test_empty_required_value_names_line(sample):
    df = meta_df(sample)
    df.loc[6, "lesion_id"] = ""
    write_meta(sample, df)
    with pytest.raises(DataError, match=r"line 8: empty lesion_id"):
        read_metadata(sample / META)


def test_duplicate_image_id_names_both_lines(sample):
    df = meta_df(sample)
    df = pd.concat([df, df.iloc[[1]]], ignore_index=True)
    write_meta(sample, df)
    last = line_of(df, len(df) - 1)
    dup = df.image_id[1]
    with pytest.raises(DataError, match=rf"line {last}: duplicate image_id {dup} \(first seen on line 3\)"):
        read_metadata(sample / META)


def test_lesion_with_two_dx(sample):
    df = meta_df(sample)
    lesion = multi_image_lesion(df)
    rows = df.index[df.lesion_id == lesion]
    old = df.dx[rows[-1]]
    new = next(c for c in CLASSES if c != old)
    df.loc[rows[-1], "dx"] = new
    write_meta(sample, df)
    with pytest.raises(DataError, match=rf"line {line_of(df, rows[0])}: lesion {lesion} has images with different dx "
                                        rf"\['{min(old, new)}', '{max(old, new)}'\]"):
        read_metadata(sample / META)


def test_metadata_header_only(sample):
    (sample / META).write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(sample / META)) + r": metadata has a header but no rows"):
        prepare_dataset(sample, sample.parent / "out", image_size=SIZE)


def test_metadata_zero_bytes(sample):
    (sample / META).write_bytes(b"")
    with pytest.raises(DataError, match=re.escape(str(sample / META)) + r": metadata file is empty"):
        read_metadata(sample / META)


def test_bom_and_crlf_read_the_same(sample):
    plain = read_metadata(sample / META)
    text = (sample / META).read_text(encoding="utf-8")
    assert "\r" not in text
    (sample / META).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    odd = read_metadata(sample / META)
    assert list(odd.columns) == list(plain.columns)
    pd.testing.assert_frame_equal(odd, plain)


@pytest.mark.parametrize("sep,name", [(";", "';'"), ("\t", "tab")])
def test_semicolon_and_tab_metadata_prepare_the_same_as_comma(pristine, prepared, tmp_path, caplog, sep, name):
    "A European-locale spreadsheet's `;` (with decimal-comma ages) and a tab-separated export read as the comma file."
    ds = Path(shutil.copytree(pristine, tmp_path / "ds"))
    df = meta_df(ds)
    assert df.age.str.contains(r"\.").any()  # the sample has decimal ages: a European spreadsheet writes 45,0
    out = df.assign(age=df.age.str.replace(".", ",", regex=False)) if sep == ";" else df
    out.to_csv(ds / META, sep=sep, index=False)
    assert f"lesion_id{sep}image_id" in (ds / META).read_text()
    pd.testing.assert_frame_equal(read_metadata(ds / META), read_metadata(pristine / META))
    caplog.clear()
    with caplog.at_level("INFO"):
        p = prepare_dataset(ds, tmp_path / "out", image_size=SIZE)
    assert f"read with {name} as the delimiter" in caplog.text
    pd.testing.assert_frame_equal(p.table, prepared.table)  # same rows, split, ages, lines
    assert np.array_equal(np.asarray(p.images), np.asarray(prepared.images)) and p.manifest["skipped"] == 0


def test_metadata_with_another_delimiter_names_it(sample):
    df = meta_df(sample)
    df.to_csv(sample / META, sep="|", index=False)
    with pytest.raises(DataError, match=r"missing required column.*seems to use '\|' as its delimiter"):
        read_metadata(sample / META)


# ---------------------------------------------------------------------------------------------------------------
# metadata ↔ image problems and broken images: strict errors
# ---------------------------------------------------------------------------------------------------------------
def test_row_without_image(sample):
    df = meta_df(sample)
    i = single_image_row(df)
    img_path(sample, df.image_id[i]).unlink()
    with pytest.raises(DataError, match=re.escape(str(sample / META)) +
                       rf": line {line_of(df, i)}: image {df.image_id[i]} has no image file"):
        prepare_dataset(sample, sample.parent / "out", image_size=SIZE)


@pytest.mark.parametrize("lenient", [False, True])
def test_image_without_row_is_listed_and_left_out(sample, lenient, caplog):
    "The metadata defines the dataset: a stray image file is reported, not fatal, in strict and lenient mode."
    extra = sample / "images" / "SYN_9999999.jpg"
    shutil.copy(img_path(sample, meta_df(sample).image_id[0]), extra)
    p = prepare_dataset(sample, sample.parent / "out", image_size=SIZE, lenient=lenient)
    report = json.loads((sample.parent / "out" / "report.json").read_text())
    assert report["stray_images"] == [str(extra)] and report["skipped"] == []
    assert len(p.table) == n_rows(sample) and "SYN_9999999" not in set(p.table.image_id)
    assert "1 image file(s) have no metadata row" in caplog.text


def _random_bytes(p: Path):
    p.write_bytes(rng_bytes(3000))


def _truncate(p: Path):
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


def _zero(p: Path):
    p.write_bytes(b"")


BREAKERS = {"random_bytes": (_random_bytes, r"unreadable or truncated image"),
            "truncated": (_truncate, r"unreadable or truncated image"),
            "zero_bytes": (_zero, r"image file is empty \(0 bytes\)")}


@pytest.mark.parametrize("kind", list(BREAKERS))
def test_broken_image_names_the_file(sample, kind):
    breaker, pattern = BREAKERS[kind]
    df = meta_df(sample)
    p = img_path(sample, df.image_id[single_image_row(df)])
    breaker(p)
    with pytest.raises(DataError, match=re.escape(str(p)) + ": " + pattern):
        prepare_dataset(sample, sample.parent / "out", image_size=SIZE)


@pytest.mark.parametrize("kind", list(BREAKERS))
def test_load_rgb_broken_bytes(pristine, kind, tmp_path):
    breaker, pattern = BREAKERS[kind]
    p = tmp_path / "x.jpg"
    shutil.copy(next((pristine / "images").glob("*.jpg")), p)
    breaker(p)
    with pytest.raises(DataError, match=r"x\.jpg: " + pattern):
        load_rgb(p.read_bytes(), "x.jpg")
    with pytest.raises(DataError, match=r"x\.jpg: " + pattern):
        decode_for_model(p.read_bytes(), SIZE, name="x.jpg")


# ---------------------------------------------------------------------------------------------------------------
# lenient: every problem above becomes a counted, listed skip and the rest is used
# ---------------------------------------------------------------------------------------------------------------
def _len_missing_image(ds, df):
    i = single_image_row(df)
    img_path(ds, df.image_id[i]).unlink()
    return len(df) - 1, 1, "metadata row", f"line {line_of(df, i)}", "no image file"


def _len_image(breaker, reason):
    def f(ds, df):
        i = single_image_row(df)
        breaker(img_path(ds, df.image_id[i]))
        return len(df) - 1, 1, "image", f"{df.image_id[i]}.jpg", reason
    return f


def _len_unknown_dx(ds, df):
    i = single_image_row(df)
    df.loc[i, "dx"] = "melanoma"
    write_meta(ds, df)
    return len(df) - 1, 1, "metadata row", f"line {line_of(df, i)}", "dx 'melanoma' is not one of"


def _len_duplicate(ds, df):
    df = pd.concat([df, df.iloc[[1]]], ignore_index=True)
    write_meta(ds, df)
    return len(df) - 1, 1, "metadata row", f"line {len(df) + 1}", "duplicate image_id"


def _len_mixed_lesion(ds, df):
    lesion = multi_image_lesion(df)
    rows = df.index[df.lesion_id == lesion]
    df.loc[rows[-1], "dx"] = next(c for c in CLASSES if c != df.dx[rows[-1]])
    write_meta(ds, df)
    # every image of the lesion is dropped (one per row)
    return len(df) - len(rows), len(rows), "metadata row", f"line {line_of(df, rows[0])}", f"lesion {lesion} has images"


LENIENT = {"missing_image": _len_missing_image,
           "random_bytes": _len_image(_random_bytes, "unreadable or truncated image"),
           "truncated": _len_image(_truncate, "unreadable or truncated image"),
           "zero_bytes": _len_image(_zero, "image file is empty"),
           "unknown_dx": _len_unknown_dx, "duplicate_id": _len_duplicate, "mixed_lesion": _len_mixed_lesion}


@pytest.mark.parametrize("kind", list(LENIENT))
def test_lenient_skips_and_counts(sample, kind):
    expected, n_skips, what, where, reason = LENIENT[kind](sample, meta_df(sample))
    out = sample.parent / "out"
    p = prepare_dataset(sample, out, image_size=SIZE, lenient=True)
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"], report
    first = report["skipped"][0]
    assert first["what"] == what
    assert where in first["where"], first
    assert reason in first["reason"], first
    assert len(report["skipped"]) == n_skips, report["skipped"]
    assert report["used"] == expected == len(p.table) == len(p.images) == p.manifest["count"]
    assert p.manifest["skipped"] == len(report["skipped"])
    assert sum(report["class_counts"].values()) == expected
    check_lesion_disjoint(p.table, p.table.split)


def test_lenient_datareport_object(sample):
    df = meta_df(sample)
    i = single_image_row(df)
    img_path(sample, df.image_id[i]).write_bytes(b"")
    df.loc[0, "dx"] = "xyz"
    write_meta(sample, df)
    rep = DataReport()
    meta = read_metadata(sample / META, lenient=True, report=rep)
    assert len(meta) == len(df) - 1
    assert len(rep.skipped) == 1 and "line 2" in rep.skipped[0]["where"] and "'xyz'" in rep.skipped[0]["reason"]
    assert "1 skipped" in rep.summary()
    # strict reading of the same file fails on that row
    with pytest.raises(DataError, match=r"line 2: dx 'xyz'"):
        read_metadata(sample / META)


# ---------------------------------------------------------------------------------------------------------------
# colour modes and formats
# ---------------------------------------------------------------------------------------------------------------
def _as_mode(src: Path, mode: str) -> tuple[Path, str]:
    "Rewrite image `src` in colour mode `mode`; returns the new path and the mode PIL will report on reading."
    with Image.open(src) as im:
        rgb = im.convert("RGB")
    src.unlink()
    if mode == "L":
        dst = src.with_suffix(".jpg")
        rgb.convert("L").save(dst, quality=90)
    elif mode == "CMYK":
        dst = src.with_suffix(".jpg")
        rgb.convert("CMYK").save(dst, quality=90)
    elif mode == "RGBA":
        dst = src.with_suffix(".png")
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
        rgba.save(dst)
    elif mode == "P":
        dst = src.with_suffix(".png")
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(dst)
    elif mode == "I;16":
        dst = src.with_suffix(".png")
        a = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(a).save(dst)
    else:
        raise ValueError(mode)
    with Image.open(dst) as im:
        assert im.mode == mode
        return dst, im.mode


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16"])
def test_non_rgb_images_become_rgb(sample, mode):
    df = meta_df(sample)
    i = single_image_row(df)
    dst, read_mode = _as_mode(img_path(sample, df.image_id[i]), mode)
    p = prepare_dataset(sample, sample.parent / "out", image_size=SIZE)
    assert p.images.shape == (len(df), SIZE, SIZE, 3) and p.images.dtype == np.uint8
    report = json.loads((sample.parent / "out" / "report.json").read_text())
    assert report["converted_modes"] == {read_mode: 1}
    assert report["format_mismatch"] == {}
    row = int(np.flatnonzero(p.table.image_id == df.image_id[i])[0])
    assert np.array_equal(p.images[row], decode_for_model(dst.read_bytes(), SIZE))
    assert p.images[row].max() > 0  # not all black
    if mode in ("L", "I;16"):
        px = p.images[row].astype(int)
        assert np.abs(px[..., 0] - px[..., 1]).max() <= 1 and np.abs(px[..., 1] - px[..., 2]).max() <= 1


def test_sixteen_bit_is_scaled_not_clipped():
    a = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # up to 65520
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG")
    rgb = np.asarray(load_rgb(b.getvalue(), "x.png"))
    assert rgb.shape == (64, 64, 3)
    assert rgb.max() == 255 and len(np.unique(rgb[..., 0])) > 200  # a full ramp, not a block of 255s


def test_png_under_jpg_name(sample):
    df = meta_df(sample)
    p = img_path(sample, df.image_id[single_image_row(df)])
    with Image.open(p) as im:
        rgb = im.convert("RGB")
    rgb.save(p, format="PNG")
    assert p.read_bytes()[:4] == b"\x89PNG"
    out = prepare_dataset(sample, sample.parent / "out", image_size=SIZE)
    assert len(out.table) == len(df)
    report = json.loads((sample.parent / "out" / "report.json").read_text())
    assert report["format_mismatch"] == {"PNG as .jpg": 1}
    assert report["converted_modes"] == {}


# ---------------------------------------------------------------------------------------------------------------
# folders that are not datasets
# ---------------------------------------------------------------------------------------------------------------
def test_empty_folder(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(DataError, match=re.escape(str(d)) + r": no HAM10000_metadata\.csv found"):
        scan_dataset(d)
    with pytest.raises(DataError, match=re.escape(str(d)) + r": no HAM10000_metadata\.csv found"):
        prepare_dataset(d, tmp_path / "out", image_size=SIZE)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope")) + r": dataset path does not exist"):
        scan_dataset(tmp_path / "nope")


def test_metadata_but_no_images(sample):
    shutil.rmtree(sample / "images")
    with pytest.raises(DataError, match=re.escape(str(sample)) + r": no images found"):
        prepare_dataset(sample, sample.parent / "out", image_size=SIZE)


def test_images_but_no_metadata(sample):
    (sample / META).unlink()
    with pytest.raises(DataError, match=re.escape(str(sample)) + r": no HAM10000_metadata\.csv found"):
        scan_dataset(sample)


def test_not_a_zip(tmp_path):
    p = tmp_path / "data.zip"
    p.write_bytes(rng_bytes(500))
    with pytest.raises(DataError, match=re.escape(str(p)) + r": not a readable zip archive"):
        scan_dataset(p)


# ---------------------------------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------------------------------
def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, b in entries.items():
            z.writestr(name, b)
    return path


def _image_entries(ds: Path, prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{p.name}": p.read_bytes() for p in sorted((ds / "images").glob("*.jpg"))}


def _assert_same_as(prepared_ref, p):
    assert p.table.image_id.tolist() == prepared_ref.table.image_id.tolist()
    assert p.table.split.tolist() == prepared_ref.table.split.tolist()
    assert np.array_equal(np.asarray(p.images), np.asarray(prepared_ref.images))
    assert p.manifest["dataset_sha256"] == prepared_ref.manifest["dataset_sha256"]
    assert p.manifest["skipped"] == 0


def _layout_parts(pristine, tmp):
    ds = tmp / "parts"
    ds.mkdir()
    shutil.copy(pristine / META, ds / META)
    imgs = sorted((pristine / "images").glob("*.jpg"))
    for k, part in enumerate((imgs[: len(imgs) // 2], imgs[len(imgs) // 2:]), 1):
        (ds / f"HAM10000_images_part_{k}").mkdir()
        for p in part:
            shutil.copy(p, ds / f"HAM10000_images_part_{k}" / p.name)
    return ds


def _layout_zip_flat(pristine, tmp):
    return _zip(tmp / "ham.zip", {META: (pristine / META).read_bytes(), **_image_entries(pristine)})


def _layout_zip_nested(pristine, tmp):
    return _zip(tmp / "ham.zip", {f"HAM10000/{META}": (pristine / META).read_bytes(),
                                   **_image_entries(pristine, "HAM10000/images/")})


def _layout_part_zips(pristine, tmp, nested=True):
    "A folder with the CSV and HAM10000_images_part_{1,2}.zip (members in a part folder, or at the zip root)."
    ds = tmp / "partzips"
    ds.mkdir()
    shutil.copy(pristine / META, ds / META)
    for k in (1, 2):
        entries = list(_image_entries(pristine, f"HAM10000_images_part_{k}/" if nested else "").items())
        half = entries[: len(entries) // 2] if k == 1 else entries[len(entries) // 2:]
        _zip(ds / f"HAM10000_images_part_{k}.zip", dict(half))
    return ds


def _layout_macosx(pristine, tmp):
    junk = rng_bytes(300, seed=1)
    ids = sorted(p.name for p in (pristine / "images").glob("*.jpg"))
    return _zip(tmp / "ham.zip", {META: (pristine / META).read_bytes(), **_image_entries(pristine, "images/"),
                                  f"__MACOSX/._{META}": junk, f"__MACOSX/images/._{ids[0]}": junk,
                                  f"images/._{ids[1]}": junk, ".DS_Store": junk, "images/.DS_Store": junk,
                                  "__MACOSX/images/SYN_8888888.jpg": junk})


LAYOUTS = {"part_folders": _layout_parts, "zip_flat": _layout_zip_flat, "zip_nested": _layout_zip_nested,
           "per_part_zips": _layout_part_zips, "zip_with_macosx": _layout_macosx}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts_give_the_same_cache(pristine, prepared, tmp_path, layout):
    src = LAYOUTS[layout](pristine, tmp_path)
    files = scan_dataset(src)
    assert sorted(files.images) == sorted(prepared.table.image_id)
    assert files.duplicates_ignored == []
    p = prepare_dataset(src, tmp_path / "out", image_size=SIZE)
    _assert_same_as(prepared, p)


def test_per_part_zips_with_images_at_zip_root(pristine, prepared, tmp_path):
    src = _layout_part_zips(pristine, tmp_path, nested=False)
    files = scan_dataset(src)
    assert sorted(files.images) == sorted(prepared.table.image_id)


def test_folder_holding_a_flat_zip(pristine, prepared, tmp_path):
    (tmp_path / "dl").mkdir()
    _layout_zip_flat(pristine, tmp_path / "dl")
    files = scan_dataset(tmp_path / "dl")
    assert sorted(files.images) == sorted(prepared.table.image_id)


def test_identical_duplicate_in_two_folders_is_ignored(sample):
    df = meta_df(sample)
    (sample / "copy").mkdir()
    dup = sample / "copy" / f"{df.image_id[0]}.jpg"
    shutil.copy(img_path(sample, df.image_id[0]), dup)
    files = scan_dataset(sample)
    assert files.duplicates_ignored == [str(dup)] or files.duplicates_ignored == [str(img_path(sample, df.image_id[0]))]
    p = prepare_dataset(sample, sample.parent / "out", image_size=SIZE)
    report = json.loads((sample.parent / "out" / "report.json").read_text())
    assert report["duplicates_ignored"] == 1 and report["skipped"] == []
    assert len(p.table) == len(df)


def test_different_duplicate_in_two_folders_is_an_error(sample):
    df = meta_df(sample)
    (sample / "copy").mkdir()
    dup = sample / "copy" / f"{df.image_id[0]}.jpg"
    shutil.copy(img_path(sample, df.image_id[1]), dup)
    with pytest.raises(DataError) as ei:
        scan_dataset(sample)
    msg = str(ei.value)
    assert f"image_id {df.image_id[0]} appears twice with different content" in msg
    assert str(dup) in msg and str(img_path(sample, df.image_id[0])) in msg


def test_two_different_metadata_files(sample):
    (sample / "old").mkdir()
    df = meta_df(sample)
    write_meta(sample / "old", df.iloc[:-1])
    with pytest.raises(DataError, match=r"2 different metadata files found"):
        scan_dataset(sample)


# ---------------------------------------------------------------------------------------------------------------
# lesion split
# ---------------------------------------------------------------------------------------------------------------
def fake_meta(lesions: dict[str, int], seed: int = 0) -> pd.DataFrame:
    "Metadata with 1-3 images per lesion."
    rng = np.random.default_rng(seed)
    rows = []
    for c, n in lesions.items():
        for j in range(n):
            for k in range(int(rng.integers(1, 4))):
                rows.append({"lesion_id": f"L_{c}_{j}", "image_id": f"I_{c}_{j}_{k}", "dx": c})
    return pd.DataFrame(rows)


BIG = {"akiec": 40, "bcc": 50, "bkl": 100, "df": 30, "mel": 100, "nv": 600, "vasc": 30}


def test_split_disjoint_stratified_and_grouped():
    meta = fake_meta(BIG)
    split = lesion_split(meta, (0.8, 0.1, 0.1), seed=0)
    assert len(split) == len(meta) and set(split) == {"train", "val", "test"}
    # a lesion's images stay together, no lesion in two splits
    assert meta.assign(s=split.values).groupby("lesion_id").s.nunique().max() == 1
    sets = {s: set(meta.lesion_id[split.values == s]) for s in ("train", "val", "test")}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    check_lesion_disjoint(meta, split)
    # every class in every split
    ct = pd.crosstab(meta.dx, split.values)
    assert (ct > 0).all().all(), ct
    # fractions at lesion level
    n = sum(BIG.values())
    for s, f in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert abs(len(sets[s]) / n - f) < 0.02, (s, len(sets[s]))
    # stratified: each class roughly 10% of its lesions in test
    per = meta.assign(s=split.values).drop_duplicates("lesion_id").groupby("dx").s.apply(lambda x: (x == "test").mean())
    assert (per.between(0.03, 0.2)).all(), per.to_dict()


def test_split_seeded():
    meta = fake_meta(BIG)
    a = lesion_split(meta, seed=1)
    b = lesion_split(meta, seed=1)
    c = lesion_split(meta, seed=2)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


def test_split_with_arrow_backed_strings():
    "pandas 3 with pyarrow stores strings as Arrow arrays, which scikit-learn cannot index (seen on a GPU box)."
    pytest.importorskip("pyarrow")
    meta = fake_meta(BIG)
    arrow = meta.astype({c: "string[pyarrow]" for c in meta.columns})
    assert lesion_split(arrow, seed=0).tolist() == lesion_split(meta.astype(object), seed=0).tolist()


def test_split_other_fractions():
    meta = fake_meta(BIG)
    split = lesion_split(meta, (0.6, 0.2, 0.2), seed=0)
    n = sum(BIG.values())
    les = meta.assign(s=split.values).drop_duplicates("lesion_id").s.value_counts() / n
    assert abs(les["train"] - 0.6) < 0.02 and abs(les["val"] - 0.2) < 0.02 and abs(les["test"] - 0.2) < 0.02


def test_split_small_sample_has_every_class_everywhere(prepared):
    t = prepared.table
    assert (pd.crosstab(t.dx, t.split) > 0).all().all()
    check_lesion_disjoint(t, t.split)


def test_split_class_with_too_few_lesions_warns_and_splits(caplog):
    "A class with 2 lesions misses val, one with 1 misses val and test; a warning names both; nothing fails."
    meta = fake_meta({**BIG, "df": 2, "vasc": 1})
    split = lesion_split(meta)
    assert sorted(split[meta.dx == "df"].unique()) == ["test", "train"]
    assert list(split[meta.dx == "vasc"].unique()) == ["train"]
    assert "df (2 lesions) will be missing from val" in caplog.text
    assert "vasc (1 lesion) will be missing from val and test" in caplog.text
    check_lesion_disjoint(meta, split)


def test_split_that_cannot_be_made_says_what_is_needed():
    with pytest.raises(DataError, match=r"validation would be empty; at least one class needs 3 lesions"):
        lesion_split(fake_meta({"nv": 2, "mel": 2, "df": 1}))
    with pytest.raises(DataError, match=r"training needs at least two classes"):
        lesion_split(fake_meta({"nv": 9}))


def test_split_small_class_among_large_ones_reaches_every_split():
    meta = fake_meta({**{c: 300 for c in CLASSES}, "df": 3})
    split = lesion_split(meta, seed=0)
    assert set(split[meta.dx == "df"]) == {"train", "val", "test"}


def test_check_lesion_disjoint_detects_leak():
    meta = fake_meta({"mel": 3, "nv": 3})
    lesion = meta.lesion_id.value_counts().index[0]
    assert (meta.lesion_id == lesion).sum() > 1
    split = pd.Series("train", index=meta.index)
    split[meta.index[meta.lesion_id == lesion][0]] = "test"
    with pytest.raises(DataError, match=rf"1 lesion\(s\) span two splits, e.g. \['{lesion}'\]"):
        check_lesion_disjoint(meta, split)


def test_split_summary(prepared):
    t = prepared.table
    s = split_summary(t, t.split)
    assert list(s.columns) == ["train", "val", "test"]
    assert s.loc["total images"].sum() == len(t)
    assert s.loc[list(CLASSES)].sum().sum() == len(t)
    assert s.loc["lesions"].sum() == t.lesion_id.nunique()


# ---------------------------------------------------------------------------------------------------------------
# decode-once cache
# ---------------------------------------------------------------------------------------------------------------
def test_prepare_outputs(prepared, pristine):
    out = prepared.dir
    assert {"images.npy", "splits.csv", "manifest.json", "report.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.tmp*"))
    n = n_rows(pristine)
    assert prepared.images.shape == (n, SIZE, SIZE, 3) and prepared.images.dtype == np.uint8
    t = prepared.table
    assert len(t) == n and t.row.tolist() == list(range(n))
    assert (t.label == t.dx.map(CLASSES.index)).all()
    assert set(t.split) == {"train", "val", "test"}
    m = prepared.manifest
    assert m["count"] == n and m["shape"] == [n, SIZE, SIZE, 3] and m["synthetic"] is True
    assert m["classes"] == list(CLASSES) and sum(m["split_counts"].values()) == n and m["skipped"] == 0
    assert m["image_size"] == SIZE and m["resize"] == "center_crop"
    assert len(prepared.rows("train")) == m["split_counts"]["train"]
    assert (prepared.labels("val") == t.label[t.split == "val"].to_numpy()).all()


def test_cache_rows_align_with_decoding(prepared, pristine):
    t = prepared.table
    for i in range(len(t)):
        b = img_path(pristine, t.image_id[i]).read_bytes()
        assert np.array_equal(prepared.images[i], decode_for_model(b, SIZE, "center_crop")), t.image_id[i]


def test_pad_resize(pristine, tmp_path):
    p = prepare_dataset(pristine, tmp_path / "out", image_size=20, resize="pad")
    t = p.table
    b = img_path(pristine, t.image_id[0]).read_bytes()
    assert np.array_equal(p.images[0], decode_for_model(b, 20, "pad"))
    # 64x48 letterboxed to 20x20: black bars top and bottom
    assert p.images[:, 0].max() == 0 and p.images[:, -1].max() == 0 and p.images[:, 10].max() > 0


def test_cache_reuse_and_rebuild(sample):
    out = sample.parent / "out"
    p1 = prepare_dataset(sample, out, image_size=SIZE)
    key1 = stat_key(out)
    t = time.perf_counter()
    p2 = prepare_dataset(sample, out, image_size=SIZE)
    reuse_s = time.perf_counter() - t
    assert reuse_s < 1.0
    assert stat_key(out) == key1 and p2.manifest == p1.manifest

    # changing one image's bytes rebuilds
    df = meta_df(sample)
    target = img_path(sample, df.image_id[5])
    with Image.open(target) as im:
        im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target, quality=70)
    p3 = prepare_dataset(sample, out, image_size=SIZE)
    assert stat_key(out) != key1
    assert p3.manifest["dataset_sha256"] != p1.manifest["dataset_sha256"]
    row = int(np.flatnonzero(p3.table.image_id == df.image_id[5])[0])
    assert np.array_equal(p3.images[row], decode_for_model(target.read_bytes(), SIZE))
    assert not np.array_equal(p3.images[row], p1.images[row])
    key3 = stat_key(out)

    # a different image_size rebuilds
    p4 = prepare_dataset(sample, out, image_size=24)
    assert p4.images.shape[1:] == (24, 24, 3) and p4.manifest["image_size"] == 24
    assert stat_key(out) != key3
    key4 = stat_key(out)
    assert stat_key(out) == key4 and prepare_dataset(sample, out, image_size=24).manifest == p4.manifest

    # force rebuilds even when nothing changed
    p5 = prepare_dataset(sample, out, image_size=24, force=True)
    assert stat_key(out) != key4
    assert np.array_equal(np.asarray(p5.images), np.asarray(p4.images))


def test_cache_rebuilds_on_other_split_params(sample):
    out = sample.parent / "out"
    p1 = prepare_dataset(sample, out, image_size=SIZE, seed=0)
    k1 = stat_key(out)
    p2 = prepare_dataset(sample, out, image_size=SIZE, seed=1)
    assert stat_key(out) != k1 and p2.manifest["seed"] == 1
    assert p2.table.image_id.tolist() == p1.table.image_id.tolist()
    k2 = stat_key(out)
    p3 = prepare_dataset(sample, out, image_size=SIZE, seed=1, fractions=(0.6, 0.2, 0.2))
    assert stat_key(out) != k2 and p3.manifest["fractions"] == [0.6, 0.2, 0.2]
    k3 = stat_key(out)
    prepare_dataset(sample, out, image_size=SIZE, seed=1, fractions=(0.6, 0.2, 0.2), lenient=True)
    assert stat_key(out) != k3


def test_load_prepared_missing(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "images.npy")) + r": missing"):
        load_prepared(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# loaders and augmentation
# ---------------------------------------------------------------------------------------------------------------
def test_loader_batches(prepared):
    rows = prepared.rows("train")
    labels = prepared.labels("train")
    xs, ys = [], []
    for x, y in cache_loader(prepared.images, rows, labels, batch_size=8):
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, SIZE, SIZE) and 1 <= x.shape[0] <= 8
        assert y.dtype == torch.long
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    assert y.tolist() == labels.tolist()
    assert torch.equal(x, torch.from_numpy(np.asarray(prepared.images)[rows]).permute(0, 3, 1, 2))


def _indexed_images(n: int) -> np.ndarray:
    "Image i is filled with value i (mod 256): the pixel tells the row."
    return np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, 4, 4, 3)).copy()


def test_loader_seeded_shuffle():
    n = 200
    imgs = _indexed_images(n)
    rows = np.arange(n)
    labels = rows % len(CLASSES)

    def order(seed):
        return torch.cat([x[:, 0, 0, 0] for x, _ in cache_loader(imgs, rows, labels, batch_size=32, shuffle=True,
                                                                  seed=seed)]).tolist()

    a, b, c = order(3), order(3), order(4)
    assert a == b and a != c
    assert sorted(a) == list(range(n)) and a != list(range(n))
    # labels follow their images
    for x, y in cache_loader(imgs, rows, labels, batch_size=32, shuffle=True, seed=3):
        assert (x[:, 0, 0, 0].long() % len(CLASSES)).tolist() == y.tolist()


def test_loader_balanced():
    counts = [10, 20, 10, 10, 40, 600, 10]
    labels = np.repeat(np.arange(7), counts)
    imgs = np.zeros((len(labels), 4, 4, 3), np.uint8)
    seen = []
    for x, y in cache_loader(imgs, np.arange(len(labels)), labels, batch_size=64, balanced=True, seed=0):
        seen.append(y)
    y = torch.cat(seen)
    assert len(y) == len(labels)
    frac = np.bincount(y.numpy(), minlength=7) / len(y)
    assert np.all(np.abs(frac - 1 / 7) < 0.05), frac
    # unbalanced for contrast
    y2 = torch.cat([y for _, y in cache_loader(imgs, np.arange(len(labels)), labels, batch_size=64)])
    assert (y2 == 5).float().mean() > 0.8


def test_cached_images_length_mismatch():
    with pytest.raises(ValueError, match=r"3 rows but 2 labels"):
        cache_loader(np.zeros((3, 4, 4, 3), np.uint8), [0, 1, 2], [0, 1])


def test_unit_batch_scales_to_unit_range_on_the_device_layout():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[1] = 255
    y = unit_batch(x)
    assert y.dtype == torch.float32 and y.shape == x.shape and y[0].max() == 0 and y[1].min() == 1
    assert unit_batch(x, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_dihedral_views_are_the_eight_symmetries():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    views = [dihedral(x, k) for k in range(8)]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(views[1], x.flip(-1)) and torch.equal(views[2], x.flip(-2))
    assert torch.equal(views[4], torch.rot90(x, 1, (-2, -1)))
    with pytest.raises(ValueError, match="0..7"):
        dihedral(x, 8)


def test_batch_augment():
    torch.manual_seed(0)
    one = torch.rand(1, 3, 24, 24)
    x = one.repeat(8, 1, 1, 1)
    aug = BatchAugment()
    y = aug(x, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    # each sample gets its own transform
    flat = y.flatten(1)
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.allclose(flat[i], flat[j], atol=1e-3), (i, j)
    assert not torch.allclose(y[0], one[0], atol=1e-3)
    # seeded generator repeats
    y2 = aug(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y, y2)
    # all transforms off: identity
    ident = BatchAugment(flip=False, rotate=0, zoom=0, brightness=0, contrast=0, saturation=0)
    assert torch.equal(ident(x), x)


def test_batch_augment_extreme_values_stay_in_range():
    x = torch.cat([torch.zeros(4, 3, 16, 16), torch.ones(4, 3, 16, 16)])
    y = BatchAugment(brightness=0.9, contrast=0.9, saturation=0.9)(x, generator=torch.Generator().manual_seed(0))
    assert y.min() >= 0 and y.max() <= 1 and torch.isfinite(y).all()


# ---------------------------------------------------------------------------------------------------------------
# real data (read-only, outside the repository)
# ---------------------------------------------------------------------------------------------------------------
real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real HAM10000 subset not present at {REAL}")
REAL_COUNTS = {"nv": 6022, "mel": 1011, "bkl": 1001, "bcc": 466, "akiec": 297, "vasc": 125, "df": 107}
PAIRS = [("ISIC_0024366", "ISIC_0029861"), ("ISIC_0024777", "ISIC_0029938")]


@real
def test_real_metadata():
    files = scan_dataset(REAL)
    rep = DataReport()
    meta = read_metadata(files.metadata, report=rep)
    assert len(meta) == 9029 == len(files.images)
    assert meta.dx.value_counts().to_dict() == REAL_COUNTS
    assert rep.skipped == [] and files.duplicates_ignored == []
    assert set(meta.image_id) == set(files.images)
    assert not is_synthetic(meta)
    for a, b in PAIRS:
        assert files.images[a].read_bytes() == files.images[b].read_bytes()
        assert meta.lesion_id[meta.image_id == a].item() == meta.lesion_id[meta.image_id == b].item()


@real
@pytest.mark.slow
def test_real_prepare(tmp_path):
    p = prepare_dataset(REAL, tmp_path / "out", image_size=32)
    t = p.table
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skipped"] == [] and p.manifest["skipped"] == 0
    assert len(t) == 9029 and p.images.shape == (9029, 32, 32, 3)
    assert p.manifest["synthetic"] is False and p.manifest["class_counts"] == {c: REAL_COUNTS[c] for c in CLASSES}
    row = {iid: i for i, iid in enumerate(t.image_id)}
    check_lesion_disjoint(t, t.split, t.group)
    assert t.groupby("lesion_id").split.nunique().max() == 1
    assert (pd.crosstab(t.dx, t.split).reindex(index=list(CLASSES)) > 0).all().all()
    # the known missed duplicates (Abhishek et al. 2025): every pair present here sits on one side
    present = [(a, b) for a, b, _ in KNOWN_DUPLICATES if a in row and b in row]
    assert len(present) == 13, len(present)  # 13 of the 18 pairs have both images in this subset
    for a, b in present:
        assert t.split[row[a]] == t.split[row[b]] and t.group[row[a]] == t.group[row[b]], (a, b)
    assert (t.groupby("group").lesion_id.nunique() > 1).sum() == 13
    for a, b in PAIRS:
        assert t.split[row[a]] == t.split[row[b]]
        assert np.array_equal(p.images[row[a]], p.images[row[b]])



# ---------------------------------------------------------------------------------------------------------------
# lesions filed under two ids stay together
# ---------------------------------------------------------------------------------------------------------------
def test_known_duplicate_pairs_join_their_lesions_in_one_split():
    meta = fake_meta({c: 30 for c in CLASSES})
    firsts = meta.groupby("lesion_id").agg(image_id=("image_id", "first"), dx=("dx", "first"))
    nv = firsts[firsts.dx == "nv"].image_id.tolist()
    pairs = [(nv[i], nv[i + 1], 0.99) for i in range(0, 20, 2)]
    for seed in range(5):
        split = lesion_split(meta, seed=seed, pairs=pairs)
        groups = lesion_groups(meta, pairs)
        check_lesion_disjoint(meta, split, groups)
        for a, b, _ in pairs:
            assert split[meta.image_id == a].iloc[0] == split[meta.image_id == b].iloc[0]
    assert groups.nunique() == meta.lesion_id.nunique() - len(pairs)


def test_check_lesion_disjoint_detects_a_duplicate_group_across_splits():
    meta = pd.DataFrame({"lesion_id": ["L1", "L2", "L3"], "image_id": ["a", "b", "c"], "dx": ["nv"] * 3})
    groups = pd.Series(["L1", "L1", "L3"])  # L1 and L2 are one lesion under two ids
    split = pd.Series(["train", "test", "val"])
    check_lesion_disjoint(meta, split)  # by lesion_id alone, nothing leaks
    with pytest.raises(DataError, match=r"1 duplicate group\(s\) span two splits, e.g. \['L1'\]"):
        check_lesion_disjoint(meta, split, groups)


# ---------------------------------------------------------------------------------------------------------------
# symlinks: how people point at a shared copy
# ---------------------------------------------------------------------------------------------------------------
def _link_layout(pristine, root, how):
    root.mkdir()
    if how == "root":
        (root / "ds").symlink_to(pristine, target_is_directory=True)
        return root / "ds"
    shutil.copy(pristine / META, root / META)
    if how == "images_folder":
        (root / "images").symlink_to(pristine / "images", target_is_directory=True)
    elif how == "part_folder":
        files = sorted((pristine / "images").iterdir())
        (root / "HAM10000_images_part_1").mkdir()
        for f in files[: len(files) // 2]:
            shutil.copy(f, root / "HAM10000_images_part_1" / f.name)
        part2 = root.parent / f"{root.name}_elsewhere"
        part2.mkdir()
        for f in files[len(files) // 2:]:
            shutil.copy(f, part2 / f.name)
        (root / "HAM10000_images_part_2").symlink_to(part2, target_is_directory=True)
    elif how == "image_files":
        (root / "images").mkdir()
        for f in (pristine / "images").iterdir():
            (root / "images" / f.name).symlink_to(f)
    return root


@pytest.mark.parametrize("how", ["root", "images_folder", "part_folder", "image_files"])
def test_symlinked_layouts_give_the_same_cache(pristine, prepared, tmp_path, how):
    ds = _link_layout(pristine, tmp_path / "linked", how)
    p = prepare_dataset(ds, tmp_path / "out", image_size=SIZE)
    assert list(p.table.image_id) == list(prepared.table.image_id)
    assert np.array_equal(np.asarray(p.images), np.asarray(prepared.images))


def test_symlink_cycle_is_visited_once(pristine, tmp_path):
    ds = _link_layout(pristine, tmp_path / "linked", "images_folder")
    (ds / "images_again").symlink_to(ds, target_is_directory=True)
    assert len(scan_dataset(ds).images) == n_rows(pristine)


# ---------------------------------------------------------------------------------------------------------------
# encodings and leftovers
# ---------------------------------------------------------------------------------------------------------------
def test_latin1_metadata_names_the_line_and_the_fix(sample):
    df = meta_df(sample)
    df.loc[3, "localization"] = "t\u00eate"
    (sample / META).write_bytes(df.to_csv(index=False).encode("cp1252"))
    with pytest.raises(DataError, match=re.escape(str(sample / META)) + r": line 5: byte 0xea .* is not UTF-8; the file "
                       r"looks like Latin-1/Windows-1252.*Re-save it as UTF-8"):
        prepare_dataset(sample, sample.parent / "out", image_size=SIZE)
    p = prepare_dataset(sample, sample.parent / "out", image_size=SIZE, lenient=True)
    assert len(p.table) == len(df) and "t\u00eate" in set(p.table.localization)
    assert json.loads((sample.parent / "out" / "report.json").read_text())["encoding"] == "cp1252"


def test_failed_prepare_leaves_no_temporary_file(sample):
    df = meta_df(sample)
    img_path(sample, df.image_id[len(df) - 1]).write_bytes(b"\xff\xd8\xff broken")
    out = sample.parent / "out"
    with pytest.raises(DataError):
        prepare_dataset(sample, out, image_size=SIZE)
    assert not list(out.glob("*.tmp*")) and not (out / "images.npy").exists()


def test_byte_identical_copies_of_other_lesions_never_cross_the_split(tmp_path):
    "Copies planted under new lesion_ids (in zips, renamed, one with another diagnosis) sit on their original's side."
    d = tmp_path / "data"
    make_synthetic_sample(d, lesions={c: 6 for c in CLASSES})
    m = pd.read_csv(d / "HAM10000_metadata.csv")
    src = m.drop_duplicates("lesion_id").sample(12, random_state=1)
    planted = src.assign(image_id=[f"DUP_{i:02d}" for i in range(12)], lesion_id=[f"HAM_DUP_{i:02d}" for i in range(12)])
    planted.loc[planted.index[:3], "dx"] = "df"
    for a, b in zip(src.image_id, planted.image_id):
        (d / "images" / f"{b}.jpg").write_bytes((d / "images" / f"{a}.jpg").read_bytes())
    pd.concat([m, planted]).to_csv(d / "HAM10000_metadata.csv", index=False)
    prep = prepare_dataset(d, tmp_path / "prep", image_size=16)
    t = prep.table.set_index("image_id")
    assert (t.split[planted.image_id].to_numpy() == t.split[src.image_id].to_numpy()).all()
    assert (t.group[planted.image_id].to_numpy() == t.group[src.image_id].to_numpy()).all()
    check_lesion_disjoint(prep.table, prep.table.split, prep.table.group)
    copies = json.loads((tmp_path / "prep" / "report.json").read_text())["copies"]
    assert {frozenset((c["image_id"], c["copy_of"])) for c in copies} == \
        {frozenset(p) for p in zip(src.image_id, planted.image_id)}
    # without the copies the split would have put some of them on another side: the test can fail
    plain = lesion_split(prep.table, seed=0)
    assert (plain.to_numpy()[t.index.get_indexer(planted.image_id)]
            != plain.to_numpy()[t.index.get_indexer(src.image_id)]).any()
