"""Planted copies of images under other lesion ids: a byte copy, a re-encoded, a resized and a 5%-cropped one are found
by `prepare` and kept on their original's side of the split; the altered ones rank at the top of the look-alike
finder; a second view of a lesion that is no copy (mirrored, cropped by a fifth) stays apart until a person confirms
it in the duplicates CSV."""
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from derma_nb.cache import prepare_dataset
from derma_nb.config import CLASSES
from derma_nb.split import lesion_split
from derma_nb.duplicates import candidate_pairs, embed_images, whitened
from derma_nb.model import WeightsUnavailable
from derma_nb.sample import make_synthetic_sample


def _jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _plant(d):
    "Three altered copies of three images, each under a new lesion id: (originals, copies)."
    m = pd.read_csv(d / "HAM10000_metadata.csv")
    src = m.drop_duplicates("lesion_id").sample(3, random_state=3)
    copies = src.assign(image_id=["COPY_jpeg", "COPY_resized", "COPY_crop"],
                        lesion_id=["HAM_C1", "HAM_C2", "HAM_C3"])
    for (a, b) in zip(src.image_id, copies.image_id):
        im = Image.open(d / "images" / f"{a}.jpg").convert("RGB")
        w, h = im.size
        if b == "COPY_resized":
            im = im.resize((int(w * 0.7), int(h * 0.7)), Image.LANCZOS)
        elif b == "COPY_crop":
            im = im.crop((int(w * 0.05), int(h * 0.05), w, h))
        (d / "images" / f"{b}.jpg").write_bytes(_jpeg(im, 60))  # every copy re-encoded, at another quality
    pd.concat([m, copies]).to_csv(d / "HAM10000_metadata.csv", index=False)
    return list(src.image_id), list(copies.image_id)


def _table(d, tmp_path, name, **kw):
    prep = prepare_dataset(d, tmp_path / name, image_size=64, **kw)
    return prep, prep.table.set_index("image_id")


def test_copies_of_one_picture_never_cross_the_split(tmp_path):
    d = tmp_path / "data"
    make_synthetic_sample(d, lesions={c: 8 for c in CLASSES})
    originals, copies = _plant(d)
    m = pd.read_csv(d / "HAM10000_metadata.csv")
    src = m[~m.image_id.isin(originals + copies)].drop_duplicates("lesion_id").sample(1, random_state=5)
    (d / "images" / "COPY_bytes.jpg").write_bytes((d / "images" / f"{src.image_id.iloc[0]}.jpg").read_bytes())
    pd.concat([m, src.assign(image_id="COPY_bytes", lesion_id="HAM_C0")]).to_csv(d / "HAM10000_metadata.csv", index=False)
    originals, copies = [src.image_id.iloc[0], *originals], ["COPY_bytes", *copies]

    prep, t = _table(d, tmp_path, "prep")
    for a, b in zip(originals, copies):
        assert t.group[a] == t.group[b] and t.split[a] == t.split[b], (a, b)
    report = __import__("json").loads((tmp_path / "prep" / "report.json").read_text())
    found = {frozenset((c["copy_of"], c["image_id"])): c["how"] for c in report["copies"]}
    assert set(found) == {frozenset(p) for p in zip(originals, copies)}, found  # each copy, and nothing else
    assert found[frozenset((originals[0], "COPY_bytes"))] == "same bytes"
    assert all(h.startswith("near copy: pHash") for p, h in found.items() if "COPY_bytes" not in p)
    # the control: split by lesion alone, the same rows put copies on another side than their originals
    plain = lesion_split(prep.table, seed=0, pairs=()).set_axis(prep.table.image_id)
    assert any(plain[a] != plain[b] for a, b in zip(originals, copies)), "planted copies should be able to leak"


def _second_views(d, n=3):
    "Mirrored images cropped by a fifth under new lesion ids: one lesion seen twice, not a copy of one picture."
    m = pd.read_csv(d / "HAM10000_metadata.csv")
    src = m.drop_duplicates("lesion_id").sample(n, random_state=11)
    views = src.assign(image_id=[f"VIEW_{i}" for i in range(n)], lesion_id=[f"HAM_V{i}" for i in range(n)])
    for a, b in zip(src.image_id, views.image_id):
        im = Image.open(d / "images" / f"{a}.jpg").convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        w, h = im.size
        (d / "images" / f"{b}.jpg").write_bytes(_jpeg(im.crop((int(w * 0.1), int(h * 0.1), int(w * 0.9), int(h * 0.9))), 90))
    pd.concat([m, views]).to_csv(d / "HAM10000_metadata.csv", index=False)
    return list(src.image_id), list(views.image_id)


def test_altered_copies_rank_first_and_confirmed_pairs_stay_together(tmp_path):
    d = tmp_path / "data"
    make_synthetic_sample(d, lesions={c: 8 for c in CLASSES})
    originals, copies = _plant(d)
    firsts, views = _second_views(d)
    prep, t = _table(d, tmp_path, "prep")
    try:
        feats = embed_images(prep.images, size=64)
    except WeightsUnavailable as e:
        pytest.skip(str(e))
    top = candidate_pairs(whitened(feats), prep.table, top=10)
    ranked = [frozenset(p) for p in zip(top.image_a, top.image_b)]
    for a, b in zip(originals, copies):
        assert frozenset((a, b)) in ranked[:6], (a, b, top.head(8).to_string())
    assert all(t.group[a] != t.group[b] for a, b in zip(firsts, views)), "a second view is no copy: not joined"

    confirmed = tmp_path / "duplicates.csv"
    pd.DataFrame({"similarity": 0.9, "from_img": firsts, "to_img": views}).to_csv(confirmed, index=False)
    kept, t = _table(d, tmp_path, "kept", duplicates=confirmed)
    assert all(t.group[a] == t.group[b] and t.split[a] == t.split[b] for a, b in zip(firsts, views))
    assert kept.manifest["confirmed_duplicates"] == sorted(f"{a}={b}" for a, b in zip(firsts, views))
