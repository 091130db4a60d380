"""Property: whatever is done to the metadata CSV, `prepare_dataset` accounts for every row or fails with a DataError
naming the file (and the line when a row is at fault), in strict and lenient mode alike."""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from derma_nb.cache import prepare_dataset
from derma_nb.config import CLASSES
from derma_nb.data import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, DataError
from derma_nb.sample import make_synthetic_sample

META = "HAM10000_metadata.csv"
NON_ASCII = "t\u00eate \u00e9paule"  # 'tête épaule': encodable in cp1252, not ASCII


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    "A small valid dataset in HAM10000 layout (3 lesions per class, 1-4 images each); never modified."
    return make_synthetic_sample(tmp_path_factory.mktemp("prop") / "ds", lesions={c: 3 for c in CLASSES},
                                 width=48, height=36)


# ---------------------------------------------------------------------------------------------------------------
# mutations of the metadata table (header + rows of strings; None = a blank line)
# ---------------------------------------------------------------------------------------------------------------
IDX = st.integers(0, 10_000)  # taken modulo the number of rows when applied, so shrinking stays meaningful
MUTATION = st.one_of(
    st.tuples(st.just("delete_row"), IDX),
    st.tuples(st.just("duplicate_row"), IDX),
    st.tuples(st.just("drop_column"), st.sampled_from(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)),
    st.tuples(st.just("empty_dx"), IDX),
    st.tuples(st.just("unknown_dx"), IDX, st.sampled_from(["melanoma", "NV", "?", "unknown"])),
    st.tuples(st.just("two_dx"), IDX),
    st.tuples(st.just("missing_image"), IDX),
    st.tuples(st.just("truncate_row"), IDX),
    st.tuples(st.just("non_ascii"), IDX),
    st.tuples(st.just("blank_line"), IDX),
    st.tuples(st.just("extra_value"), IDX),
    st.tuples(st.just("trailing_separator"), IDX),
    st.tuples(st.just("stray_quote"), IDX),
    st.tuples(st.just("header_row"), IDX),
    st.tuples(st.just("duplicate_column"), st.sampled_from(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)),
)
ENCODING = st.sampled_from(["utf-8", "utf-8-sig", "cp1252"])
NEWLINE = st.sampled_from(["\n", "\r\n"])


class QuotedRow(list):
    "A row written with an unmatched quote before its last value (a hand edit gone wrong)."


class Table:
    "The metadata as header + rows, the rows' faults as the mutations left them."

    def __init__(self, header: list[str], rows: list[list[str]]):
        self.header, self.rows = list(header), [list(r) for r in rows]

    def data(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r is not None]

    def col(self, name: str) -> int | None:
        return self.header.index(name) if name in self.header else None

    def set(self, i: int, name: str, value: str):
        c, r = self.col(name), self.rows[i]
        if c is not None and c < len(r):
            r[c] = value

    def apply(self, m: tuple):
        op, *args = m
        if op in ("drop_column", "duplicate_column"):
            c = self.col(args[0])
            if c is not None:
                for r in [self.header] + [r for r in self.rows if r is not None and c < len(r)]:
                    r.insert(c, r[c]) if op == "duplicate_column" else r.pop(c)
            return
        data = self.data()
        if not data:
            return
        i = data[args[0] % len(data)]
        if op == "delete_row":
            del self.rows[i]
        elif op == "duplicate_row":
            self.rows.insert(i + 1, list(self.rows[i]))
        elif op == "empty_dx":
            self.set(i, "dx", "")
        elif op == "unknown_dx":
            self.set(i, "dx", args[1])
        elif op == "two_dx":  # another diagnosis for one image of a lesion with several images
            lid = self.col("lesion_id")
            shared = [k for k in data if lid is not None and lid < len(self.rows[k]) and
                      sum(self.rows[j][lid:lid + 1] == self.rows[k][lid:lid + 1] for j in data) > 1]
            if shared and (c := self.col("dx")) is not None and c < len(self.rows[k := shared[args[0] % len(shared)]]):
                self.rows[k][c] = next(x for x in CLASSES if x != self.rows[k][c])
        elif op == "missing_image":
            self.set(i, "image_id", "ISIC_9999999")
        elif op == "truncate_row":  # a row cut short (fewer fields than the header)
            self.rows[i] = self.rows[i][: max(1, len(self.rows[i]) - 2)]
        elif op == "non_ascii":
            self.set(i, "localization" if self.col("localization") is not None else self.header[-1], NON_ASCII)
        elif op == "blank_line":
            self.rows.insert(i, None)
        elif op == "extra_value":  # a stray separator: one value too many
            self.rows[i].insert(len(self.rows[i]) // 2, "x")
        elif op == "trailing_separator":  # an empty value at the end (harmless)
            self.rows[i].append("")
        elif op == "stray_quote":
            self.rows[i] = QuotedRow(self.rows[i])
        elif op == "header_row":  # two CSV files pasted together
            self.rows.insert(i, list(self.header))

    def encode(self, encoding: str, newline: str) -> bytes:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator=newline)
        w.writerow(self.header)
        for r in self.rows:
            if r is None:
                buf.write(newline)
            elif isinstance(r, QuotedRow) and r:
                buf.write(",".join(r[:-1] + ['"' + r[-1]]) + newline)
            else:
                w.writerow(r)
        text = buf.getvalue()
        if encoding == "cp1252" and NON_ASCII not in text:  # make the re-encoding matter: one non-ASCII value
            free = [c for c, name in enumerate(self.header) if name not in REQUIRED_COLUMNS]
            full = [k for k in self.data() if len(self.rows[k]) == len(self.header)]
            if free and full:
                self.rows[full[0]][free[-1]] = NON_ASCII
                return self.encode(encoding, newline)
        return text.encode(encoding)


def physical_lines(raw: bytes) -> list[str]:
    "The file's lines as a text editor numbers them (line 1 = header)."
    return raw.decode("utf-8-sig", errors="replace").replace("\r\n", "\n").split("\n")


def check_lines(message: str, lines: list[str], image_id: str = ""):
    "Every 'line N' in a message is a non-blank line of the file, holding `image_id` when one is named."
    for n in map(int, re.findall(r"\bline (\d+)", message)):
        assert 1 <= n <= len(lines) and lines[n - 1].strip(), (message, n)
        if image_id:
            assert image_id in lines[n - 1], (message, lines[n - 1])


# ---------------------------------------------------------------------------------------------------------------
# the property
# ---------------------------------------------------------------------------------------------------------------
def outcome(ds: Path, out: Path, lenient: bool, raw: bytes, n_rows: int) -> str:
    "Run prepare; check the accounting on success and the message on DataError; 'ok' or 'error'."
    csv_path = ds / META
    lines = physical_lines(raw)
    try:
        prep = prepare_dataset(ds, out, image_size=16, lenient=lenient, workers=1)
    except DataError as e:
        msg = str(e)
        assert str(csv_path) in msg, f"DataError does not name {csv_path}: {msg}"
        check_lines(msg, lines)
        return "error"
    report = json.loads((out / "report.json").read_text())
    row_skips = [s for s in report["skipped"] if s["what"] == "metadata row"]
    image_skips = [s for s in report["skipped"] if s["what"] == "image"]
    assert report["rows"] == n_rows, (report["rows"], n_rows)
    assert report["used"] == len(prep.table) == len(prep.images), report
    assert report["used"] + len(row_skips) + len(image_skips) == n_rows, report  # no silent drop
    if not lenient:
        assert not report["skipped"], report["skipped"]
    for s in row_skips:
        assert str(csv_path) in s["where"], s
        check_lines(s["where"], lines, s["image_id"])
    used_lines = prep.table.line.tolist()
    assert len(set(used_lines)) == len(used_lines)  # each row used once
    for n, image_id in zip(used_lines, prep.table.image_id):
        check_lines(f"line {n}", lines, image_id)
    return "ok"


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(MUTATION, max_size=4), encoding=ENCODING, newline=NEWLINE)
def test_prepare_accounts_for_every_row_or_names_the_file(pristine, mutations, encoding, newline):
    with open(pristine / META, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    t = Table(header, rows)
    for m in mutations:
        t.apply(m)
    raw = t.encode(encoding, newline)
    n_rows = len(t.data())
    with tempfile.TemporaryDirectory() as tmp:
        ds = Path(tmp) / "ds"
        ds.mkdir()
        (ds / "images").symlink_to(pristine / "images", target_is_directory=True)
        (ds / META).write_bytes(raw)
        results = {lenient: outcome(ds, Path(tmp) / f"out{lenient}", lenient, raw, n_rows)
                   for lenient in (False, True)}
    event(f"strict {results[False]}, lenient {results[True]}")
    # lenient mode is never stricter than strict mode
    assert not (results[False] == "ok" and results[True] == "error"), (mutations, results)


def test_the_property_sees_both_outcomes(pristine, tmp_path):
    "Sanity: the unmutated sample prepares in both modes (so the property above is not vacuous)."
    for lenient in (False, True):
        p = prepare_dataset(pristine, tmp_path / f"o{lenient}", image_size=16, lenient=lenient, workers=1)
        assert len(p.table) == sum(1 for _ in open(pristine / META)) - 1
