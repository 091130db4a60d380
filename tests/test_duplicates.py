"""Planted copies of images under other lesion ids — re-encoded, resized, cropped by 5% — rank at the top of the
look-alike finder, and once confirmed in a duplicates CSV the split keeps each on its original's side."""
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from derma_nb.cache import prepare_dataset
from derma_nb.config import CLASSES
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


def test_altered_copies_rank_first_and_confirmed_pairs_stay_together(tmp_path):
    d = tmp_path / "data"
    make_synthetic_sample(d, lesions={c: 8 for c in CLASSES})
    originals, copies = _plant(d)
    prep = prepare_dataset(d, tmp_path / "prep", image_size=64)
    try:
        feats = embed_images(prep.images, size=64)
    except WeightsUnavailable as e:
        pytest.skip(str(e))
    top = candidate_pairs(whitened(feats), prep.table, top=10)
    ranked = [frozenset(p) for p in zip(top.image_a, top.image_b)]
    for a, b in zip(originals, copies):
        assert frozenset((a, b)) in ranked[:6], (a, b, top.head(8).to_string())
    where = dict(zip(prep.table.image_id, prep.table.split))
    assert any(where[a] != where[b] for a, b in zip(originals, copies)), "planted copies should be able to leak"

    confirmed = tmp_path / "duplicates.csv"
    pd.DataFrame({"similarity": 0.99, "from_img": originals, "to_img": copies}).to_csv(confirmed, index=False)
    kept = prepare_dataset(d, tmp_path / "kept", image_size=64, duplicates=confirmed)
    where = dict(zip(kept.table.image_id, kept.table.split))
    assert [where[b] for b in copies] == [where[a] for a in originals]
    assert kept.manifest["confirmed_duplicates"] == sorted(f"{a}={b}" for a, b in zip(originals, copies))
