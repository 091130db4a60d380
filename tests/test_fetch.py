"""Tests for derma_nb.fetch against a local HTTP server that can be told to fail (no internet needed)."""
from __future__ import annotations

import hashlib
import io
import logging
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from derma_nb.fetch import (ISIC2018_FILES, FetchError, MetadataError, download, fetch_dataset,
                            isic2018_to_ham10000, sha256_file, unpack)

GT_HEADER = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"
# (image, dx column, lesion_id, diagnosis_confirm_type)
ROWS = [
    ("ISIC_0024306", "NV", "HAM_0000550", "serial imaging showing no change"),
    ("ISIC_0024307", "MEL", "HAM_0003577", "histopathology"),
    ("ISIC_0024308", "MEL", "HAM_0003577", "histopathology"),
    ("ISIC_0024309", "BKL", "HAM_0001477", "single image expert consensus"),
    ("ISIC_0024310", "VASC", "HAM_0000484", "confocal microscopy with consensus dermoscopy"),
    ("ISIC_0024311", "AKIEC", "HAM_0003350", "histopathology"),
]
LABELS = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


# ---------------------------------------------------------------------------------------------------------------
# A local server that supports Range requests and can be told to fail
# ---------------------------------------------------------------------------------------------------------------
class State:
    "What the server serves, how it should misbehave, and what it saw."

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.fail_503: dict[str, int] = {}  # path -> how many more requests answer 503
        self.drop_once: set[str] = set()  # paths whose next body is cut off halfway
        self.corrupt: set[str] = set()  # paths served with one byte flipped
        self.ignore_range: set[str] = set()  # paths that always answer 200 with the whole file
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()

    def seen(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        st: State = self.server.state
        path, rng = self.path, self.headers.get("Range")
        with st.lock:
            st.requests.append((path, rng))
            if st.fail_503.get(path, 0) > 0:
                st.fail_503[path] -= 1
                return self._reply(503, b"busy")
            drop = path in st.drop_once
            st.drop_once.discard(path)
        if path not in st.files:
            return self._reply(404, b"not found")
        data = st.files[path]
        if path in st.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        if rng and path not in st.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if drop:
            self.send_header("Connection", "close")
        self.end_headers()
        if drop:  # promise the full length, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def _reply(self, code: int, body: bytes, headers: dict | None = None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.state = State()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    srv.base = f"http://127.0.0.1:{srv.server_port}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _log(caplog):
    caplog.set_level(logging.INFO, logger="derma_nb")


# ---------------------------------------------------------------------------------------------------------------
# Building a tiny ISIC 2018 Task 3 release
# ---------------------------------------------------------------------------------------------------------------
def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (seed * 40 % 256, 80, 120)).save(buf, format="JPEG")
    return buf.getvalue()


def gt_csv(rows=ROWS) -> str:
    return GT_HEADER + "".join(
        f"{img}," + ",".join("1.0" if c == dx else "0.0" for c in LABELS) + "\n" for img, dx, _, _ in rows)


def groupings_csv(rows=ROWS) -> str:
    return "image,lesion_id,diagnosis_confirm_type\n" + "".join(f"{i},{l},{t}\n" for i, _, l, t in rows)


def zip_bytes(members: dict[str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def isic_release(rows=ROWS, gt: str | None = None, groupings: str | None = None) -> dict[str, bytes]:
    "The three ISIC files, named as in ISIC2018_FILES, as bytes."
    return {
        "ISIC2018_Task3_Training_Input.zip": zip_bytes(
            {f"ISIC2018_Task3_Training_Input/{img}.jpg": jpeg(k) for k, (img, *_) in enumerate(rows)}
            | {"ISIC2018_Task3_Training_Input/LICENSE.txt": "CC-BY-NC"}),
        "ISIC2018_Task3_Training_GroundTruth.zip": zip_bytes(
            {"ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv": gt or gt_csv(rows)}),
        "ISIC2018_Task3_Training_LesionGroupings.csv": (groupings or groupings_csv(rows)).encode(),
    }


def serve(server, name: str, data: bytes) -> str:
    server.state.files["/" + name] = data
    return f"{server.base}/{name}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_isic(root: Path, gt: str, groupings: str):
    "Lay out ISIC metadata files as they are after unpacking."
    (root / "ISIC2018_Task3_Training_GroundTruth").mkdir(parents=True)
    (root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv").write_text(gt)
    (root / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text(groupings)


# ---------------------------------------------------------------------------------------------------------------
# fetch_dataset end to end
# ---------------------------------------------------------------------------------------------------------------
def test_fetch_dataset_isic_end_to_end(server, tmp_path, caplog):
    release = isic_release()
    files = [{"url": serve(server, n, d), "sha256": sha(d), "size": len(d)} for n, d in release.items()]
    assert [f["url"].rsplit("/", 1)[1] for f in files] == [f["url"].rsplit("/", 1)[1] for f in ISIC2018_FILES]
    dest = tmp_path / "data"
    assert fetch_dataset(files, dest, backoff=0.01) == dest

    meta = pd.read_csv(dest / "HAM10000_metadata.csv", keep_default_na=False)
    assert list(meta.columns) == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    assert list(meta.image_id) == [r[0] for r in ROWS]
    assert list(meta.lesion_id) == [r[2] for r in ROWS]
    assert list(meta.dx) == ["nv", "mel", "mel", "bkl", "vasc", "akiec"]
    assert list(meta.dx_type) == ["follow_up", "histo", "histo", "consensus", "confocal", "histo"]
    assert (meta[["age", "sex", "localization"]] == "").all().all()
    for img, *_ in ROWS:  # images stay where the zip put them
        assert Image.open(dest / "ISIC2018_Task3_Training_Input" / f"{img}.jpg").size == (8, 6)
    for name, data in release.items():
        assert sha256_file(dest / ".downloads" / name) == sha(data)
    assert not list(dest.rglob("*.part"))
    assert sha(release["ISIC2018_Task3_Training_Input.zip"]) in caplog.text  # logged so users can pin it

    # a second run verifies what is there and makes no requests
    n = len(server.state.requests)
    caplog.clear()
    fetch_dataset(files, dest)
    assert len(server.state.requests) == n
    assert "already present and verified; skipping download" in caplog.text


def test_fetch_dataset_ham10000_layout_just_unpacks(server, tmp_path):
    meta = "lesion_id,image_id,dx,dx_type,age,sex,localization\nHAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp\n"
    data = zip_bytes({"HAM10000_metadata.csv": meta, "HAM10000_images_part_1/ISIC_0027419.jpg": jpeg(1)})
    url = serve(server, "skin-cancer-mnist-ham10000.zip", data)
    dest = fetch_dataset([{"url": url, "name": "ham.zip"}], tmp_path / "data", layout="ham10000")
    assert (dest / "HAM10000_metadata.csv").read_text() == meta
    assert (dest / "HAM10000_images_part_1" / "ISIC_0027419.jpg").exists()
    assert (dest / ".downloads" / "ham.zip").exists()


def test_fetch_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(FetchError, match=r"layout must be one of \['isic2018', 'ham10000'\], got 'kaggle'"):
        fetch_dataset([{"url": "http://127.0.0.1/x.zip"}], tmp_path, layout="kaggle")
    with pytest.raises(FetchError, match=r"files\[1\] must be a mapping with a 'url'"):
        fetch_dataset([{"url": "http://127.0.0.1/x.zip"}, {"sha256": "ab"}], tmp_path)
    with pytest.raises(FetchError, match=r"files\[0\] has unknown key\(s\) \['md5'\]"):
        fetch_dataset([{"url": "http://127.0.0.1/x.zip", "md5": "ab"}], tmp_path)
    with pytest.raises(FetchError, match="cannot derive a file name from 'http://127.0.0.1/'; give it a 'name'"):
        fetch_dataset([{"url": "http://127.0.0.1/"}], tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# download: retries, resume, verification, offline
# ---------------------------------------------------------------------------------------------------------------
def test_retries_after_503_then_succeeds(server, tmp_path, caplog):
    data = b"x" * 5000
    url = serve(server, "f.bin", data)
    server.state.fail_503["/f.bin"] = 2
    out = download(url, tmp_path / "f.bin", sha256=sha(data), retries=3, backoff=0.01)
    assert out.read_bytes() == data
    assert len(server.state.seen("/f.bin")) == 3
    assert "failed (HTTP 503); retrying, 2 attempt(s) left" in caplog.text
    assert "failed (HTTP 503); retrying, 1 attempt(s) left" in caplog.text
    assert f"sha256 {sha(data)}" in caplog.text


def test_503_on_every_attempt_gives_up(server, tmp_path):
    url = serve(server, "f.bin", b"data")
    server.state.fail_503["/f.bin"] = 10
    with pytest.raises(FetchError) as e:
        download(url, tmp_path / "f.bin", retries=2, backoff=0.01)
    assert f"could not reach {url} after 2 attempt(s): HTTP 503 on every attempt" in str(e.value)
    assert "download the file by hand" in str(e.value)
    assert len(server.state.seen("/f.bin")) == 2


def test_dropped_connection_resumes_with_range(server, tmp_path, caplog):
    data = bytes(range(256)) * 400  # 102400 bytes
    url = serve(server, "big.zip", data)
    server.state.drop_once.add("/big.zip")
    dest = tmp_path / "big.zip"
    download(url, dest, sha256=sha(data), size=len(data), retries=3, backoff=0.01)
    assert server.state.seen("/big.zip") == [None, f"bytes={len(data) // 2}-"]
    assert sha256_file(dest) == sha(data)
    assert not (tmp_path / "big.zip.part").exists()
    assert "connection closed after 51200 bytes" in caplog.text
    assert "resuming" in caplog.text


def test_leftover_part_is_resumed_across_runs(server, tmp_path):
    data = b"0123456789" * 1000
    url = serve(server, "f.bin", data)
    (tmp_path / "f.bin.part").write_bytes(data[:3000])  # left by an interrupted earlier run
    download(url, tmp_path / "f.bin", sha256=sha(data))
    assert server.state.seen("/f.bin") == ["bytes=3000-"]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(server, tmp_path, caplog):
    data = b"abcdefghij" * 100
    url = serve(server, "f.bin", data)
    server.state.ignore_range.add("/f.bin")
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes from another file")
    download(url, tmp_path / "f.bin", sha256=sha(data))
    assert (tmp_path / "f.bin").read_bytes() == data
    assert "server ignored the Range request" in caplog.text


def test_corrupted_download_raises_and_leaves_nothing(server, tmp_path):
    data = b"payload" * 100
    url = serve(server, "f.zip", data)
    server.state.corrupt.add("/f.zip")
    dest = tmp_path / "f.zip"
    with pytest.raises(FetchError) as e:
        download(url, dest, sha256=sha(data), backoff=0.01)
    msg = str(e.value)
    assert url in msg and "sha256 mismatch" in msg
    assert f"expected {sha(data)}" in msg
    assert f"got {sha(bytes([data[0] ^ 0xFF]) + data[1:])}" in msg
    assert not dest.exists() and not (tmp_path / "f.zip.part").exists()


def test_size_mismatch_raises(server, tmp_path):
    data = b"z" * 1234
    url = serve(server, "f.bin", data)
    dest = tmp_path / "f.bin"
    with pytest.raises(FetchError) as e:
        download(url, dest, size=1000)
    assert f"{url}: size mismatch: expected 1000 bytes, got 1234" in str(e.value)
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()


def test_existing_file_skipped_or_replaced(server, tmp_path, caplog):
    data = b"good" * 10
    url = serve(server, "f.bin", data)
    dest = tmp_path / "f.bin"
    dest.write_bytes(data)
    download(url, dest, sha256=sha(data))
    assert server.state.seen("/f.bin") == []
    assert "already present and verified; skipping download" in caplog.text
    dest.write_bytes(b"bad")
    download(url, dest, sha256=sha(data))
    assert dest.read_bytes() == data and len(server.state.seen("/f.bin")) == 1
    assert "exists but does not match (size" not in caplog.text and "sha256: expected" in caplog.text


def test_unreachable_host_gives_guidance(tmp_path, closed_port, caplog):
    url = f"http://127.0.0.1:{closed_port}/ISIC2018_Task3_Training_Input.zip"
    dest = tmp_path / "d" / "ISIC2018_Task3_Training_Input.zip"
    with pytest.raises(FetchError) as e:
        download(url, dest, retries=3, backoff=0.01)
    msg = str(e.value)
    assert f"could not reach {url} after 3 attempt(s)" in msg
    assert f"download the file by hand and place it at {dest}" in msg
    assert "point data.dir in params.yaml at an existing HAM10000 folder or zip" in msg
    assert caplog.text.count("failed (NewConnectionError); retrying") == 2  # 3 attempts, 2 waits
    assert not dest.exists()


def test_unreachable_host_via_fetch_dataset(tmp_path, closed_port):
    files = [{"url": f"http://127.0.0.1:{closed_port}/ISIC2018_Task3_Training_Input.zip"}]
    with pytest.raises(FetchError, match=r"could not reach .* download the file by hand"):
        fetch_dataset(files, tmp_path / "data", retries=1)


def test_404_is_not_retried(server, tmp_path):
    url = f"{server.base}/missing.zip"
    with pytest.raises(FetchError, match=r"missing.zip: the server answered HTTP 404"):
        download(url, tmp_path / "missing.zip", retries=3, backoff=0.01)
    assert len(server.state.seen("/missing.zip")) == 1


# ---------------------------------------------------------------------------------------------------------------
# unpack
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("member", ["../escape.txt", "a/../../escape.txt", "/etc/escape.txt", "C:/escape.txt"])
def test_zip_slip_member_rejected(tmp_path, member):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(zip_bytes({"fine.txt": "ok", member: "gotcha"}))
    with pytest.raises(FetchError) as e:
        unpack(archive, tmp_path / "out")
    assert f"refusing to extract member {member!r}" in str(e.value) and str(archive) in str(e.value)
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "out" / "fine.txt").exists()  # nothing is written before all names are checked


def test_corrupt_zip_rejected(tmp_path):
    good = zip_bytes({f"img_{i}.jpg": jpeg(i) * 20 for i in range(5)})
    archive = tmp_path / "cut.zip"
    archive.write_bytes(good[: len(good) // 2])  # truncated: no central directory
    with pytest.raises(FetchError) as e:
        unpack(archive, tmp_path / "out")
    assert f"{archive}: corrupt or truncated zip" in str(e.value)
    assert "re-run to download it again" in str(e.value)


def test_zip_with_bad_crc_rejected(tmp_path):
    good = bytearray(zip_bytes({"a.txt": "hello world " * 50}))
    i = good.index(b"PK\x03\x04") + 30 + len("a.txt") + 5  # a byte inside the compressed data
    good[i] ^= 0xFF
    archive = tmp_path / "bad.zip"
    archive.write_bytes(bytes(good))
    with pytest.raises(FetchError, match=r"bad.zip: corrupt or truncated zip"):
        unpack(archive, tmp_path / "out")


def test_unpack_copies_non_zip_and_is_idempotent(tmp_path, caplog):
    csv = tmp_path / "groupings.csv"
    csv.write_text("image,lesion_id\n")
    assert unpack(csv, tmp_path / "out") == tmp_path / "out"
    assert (tmp_path / "out" / "groupings.csv").read_text() == "image,lesion_id\n"
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"d/x.txt": "x", "__MACOSX/d/._x.txt": "junk"}))
    unpack(archive, tmp_path / "out")
    unpack(archive, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "x.txt").read_text() == "x"
    assert not (tmp_path / "out" / "__MACOSX").exists()
    assert "0 file(s) extracted, 1 already present" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# ISIC 2018 -> HAM10000 metadata
# ---------------------------------------------------------------------------------------------------------------
def test_ground_truth_row_with_two_labels(tmp_path):
    gt = gt_csv().replace("ISIC_0024311,0.0,0.0,0.0,1.0", "ISIC_0024311,0.0,1.0,0.0,1.0")
    write_isic(tmp_path, gt, groupings_csv())
    with pytest.raises(MetadataError) as e:
        isic2018_to_ham10000(tmp_path)
    assert isinstance(e.value, ValueError) and isinstance(e.value, FetchError)
    assert str(e.value).endswith(
        "ISIC2018_Task3_Training_GroundTruth.csv: line 7: image ISIC_0024311 has 2 labels set (NV, AKIEC), "
        "expected exactly one")
    assert not (tmp_path / "HAM10000_metadata.csv").exists()


def test_ground_truth_row_with_no_label_or_bad_value(tmp_path):
    gt = gt_csv().replace("ISIC_0024307,1.0", "ISIC_0024307,0.0")
    write_isic(tmp_path, gt, groupings_csv())
    with pytest.raises(MetadataError, match=r"GroundTruth.csv: line 3: image ISIC_0024307 has 0 labels set, expected exactly one"):
        isic2018_to_ham10000(tmp_path)
    gt = gt_csv().replace("ISIC_0024307,1.0", "ISIC_0024307,0.7")
    (tmp_path / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv").write_text(gt)
    with pytest.raises(MetadataError, match=r"line 3: image ISIC_0024307 has MEL='0.7', expected 0.0 or 1.0"):
        isic2018_to_ham10000(tmp_path)


def test_groupings_missing_an_image(tmp_path):
    write_isic(tmp_path, gt_csv(), groupings_csv(ROWS[:2] + ROWS[3:]))
    with pytest.raises(MetadataError) as e:
        isic2018_to_ham10000(tmp_path)
    msg = str(e.value)
    assert "ISIC2018_Task3_Training_LesionGroupings.csv: 1 image(s) of ISIC2018_Task3_Training_GroundTruth.csv " \
           "have no lesion grouping: ISIC_0024308" in msg


def test_groupings_with_extra_images(tmp_path):
    extra = [(f"ISIC_99999{i:02d}", "NV", f"HAM_99999{i:02d}", "histopathology") for i in range(8)]
    write_isic(tmp_path, gt_csv(), groupings_csv(ROWS + extra))
    with pytest.raises(MetadataError) as e:
        isic2018_to_ham10000(tmp_path)
    assert "LesionGroupings.csv: 8 image(s) are not in ISIC2018_Task3_Training_GroundTruth.csv: " \
           "ISIC_9999900, ISIC_9999901, ISIC_9999902, ISIC_9999903, ISIC_9999904, … (3 more)" in str(e.value)


def test_missing_files_and_columns(tmp_path):
    with pytest.raises(FetchError, match=r"no ISIC2018_Task3_Training_GroundTruth.csv found anywhere under it"):
        isic2018_to_ham10000(tmp_path)
    write_isic(tmp_path, gt_csv(), "image,lesion\nISIC_0024306,HAM_0000550\n")
    with pytest.raises(MetadataError, match=r"LesionGroupings.csv: missing column\(s\) \['lesion_id', 'diagnosis_confirm_type'\]"):
        isic2018_to_ham10000(tmp_path)


def test_duplicate_image_and_blank_lines(tmp_path):
    gt = gt_csv(ROWS[:2]) + "\n" + gt_csv(ROWS[:1]).removeprefix(GT_HEADER)
    write_isic(tmp_path, gt, groupings_csv(ROWS[:2]))
    with pytest.raises(MetadataError, match=r"GroundTruth.csv: line 5: image ISIC_0024306 appears more than once"):
        isic2018_to_ham10000(tmp_path)


def test_isic_conversion_via_fetch_with_bad_release(server, tmp_path):
    release = isic_release(groupings=groupings_csv(ROWS[1:]))
    files = [{"url": serve(server, n, d)} for n, d in release.items()]
    with pytest.raises(MetadataError, match=r"1 image\(s\) of .* have no lesion grouping: ISIC_0024306"):
        fetch_dataset(files, tmp_path / "data", backoff=0.01)
