"""The portable CPU arithmetic (`cpu_kernels: portable`) computes the same bits on a CPU of the other vendor.

The pipeline's arithmetic in miniature (tests/arithmetic_probe.py: prepare, random forest, both training phases,
decisions, bootstrap, Grad-CAM) runs here and under QEMU's user-mode emulation of a CPU of the other vendor — an
Intel Haswell on an AMD host, an AMD EPYC Rome on an Intel one. QEMU answers CPUID with that CPU's vendor, ISA
extensions (AVX2 and FMA; no AVX-512) and caches, so PyTorch, oneDNN, MKL, NumPy and OpenBLAS each pick the kernels
they would pick there. With the portable environment the hashes must match step for step. With PyTorch's, oneDNN's
and MKL's own kernel choice (and the plain AdamW) the trained weights must differ, which shows that the emulated CPU
really is another CPU to them. (NumPy stays pinned in that control: its own AVX2 sort crashes under QEMU 7.2.)

Needs qemu-user (`apt-get install qemu-user`; .ci/run installs it) and skips without it. Emulation is slow: the
probe takes about 25 s here and several minutes emulated."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from derma_nb.runtime import portable_env

QEMU = shutil.which("qemu-x86_64")
OTHER_VENDOR = {"AuthenticAMD": "Haswell-v4", "GenuineIntel": "EPYC-Rome"}  # QEMU CPU models: Intel, AMD
PROBE = Path(__file__).with_name("arithmetic_probe.py")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(QEMU is None, reason="qemu-user is not installed (qemu-x86_64)")]


def host_vendor() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("vendor_id"):
            return line.split(":", 1)[1].strip()
    return ""


TORCH_PINS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")


def probe(out: Path, mode: str, emulate: str | None = None) -> dict:
    "The probe's hashes, on this CPU or on the QEMU CPU model `emulate`; `native`: PyTorch and MKL choose kernels."
    pins = {k: v for k, v in portable_env().items() if mode == "portable" or k not in TORCH_PINS}
    env = {**{k: v for k, v in os.environ.items() if k not in portable_env()}, **pins, "PYTHONPATH": str(ROOT),
           "MPLBACKEND": "Agg"}
    cmd = [*([QEMU, "-cpu", emulate] if emulate else []), sys.executable, str(PROBE), str(out), mode]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    errors = [line for line in r.stderr.splitlines() if not line.startswith("qemu-x86_64: warning")]
    assert r.returncode == 0, "\n".join(errors[-40:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_portable_arithmetic_is_the_same_on_a_cpu_of_the_other_vendor(tmp_path):
    other = OTHER_VENDOR.get(host_vendor())
    if other is None:
        pytest.skip(f"host CPU vendor {host_vendor()!r}: no other-vendor model chosen for it")
    here, there = probe(tmp_path / "here", "portable"), probe(tmp_path / "there", "portable", other)
    assert here["arithmetic"]["cpu_kernels"] == there["arithmetic"]["cpu_kernels"] == "portable"
    differ = {k: (v, there["hashes"].get(k)) for k, v in here["hashes"].items() if there["hashes"].get(k) != v}
    assert not differ, f"portable arithmetic differs on an emulated {other}: {differ}"
    native_here, native_there = probe(tmp_path / "nh", "native"), probe(tmp_path / "nt", "native", other)
    assert native_here["hashes"]["train_weights"] != native_there["hashes"]["train_weights"], \
        f"the emulated {other} computes like this CPU even with native kernels: it does not test another CPU"
