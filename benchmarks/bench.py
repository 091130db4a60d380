"""derma-nb benchmarks: fast paths vs naive ones, measured side by side in one run, on whatever device is present.

    python benchmarks/bench.py                  # all sections
    python benchmarks/bench.py --only data      # one or more of: data loader phase1 phase2 compile inference frozen
                                                # memory tracking pipeline

Data: the real HAM10000 subset in ../shared/data/ham10000 when present (else the synthetic sample).
Writes reports/benchmarks.json and reports/benchmarks.md (device, versions, command) and prints the table.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "ham10000"
ARCH = "tf_efficientnet_lite0"  # the recipe's backbone (profiles real and full); weights do not change speed
UNFREEZE = 2  # the stages phase 2 fine-tunes in both profiles
SECTIONS = ("data", "loader", "phase1", "phase2", "compile", "inference", "frozen", "memory", "tracking", "pipeline")


def timed(fn, repeat=1):
    "Run fn `repeat` times; return (median seconds, last result)."
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def dataset_dir(ctx) -> tuple[Path, str]:
    "--data when given, else the real subset beside the checkout, else the synthetic sample (made once)."
    tmp = ctx["tmp"]
    if ctx.get("data"):
        return Path(ctx["data"]), f"HAM10000 images in {ctx['data']}"
    if REAL.exists():
        return REAL, "real HAM10000 subset (../shared/data/ham10000)"
    if (tmp / "sample").exists():
        return tmp / "sample", "SYNTHETIC sample"
    from derma_nb.sample import make_synthetic_sample

    return make_synthetic_sample(tmp / "sample"), "SYNTHETIC sample"


class NaiveJPEGDataset(torch.utils.data.Dataset):
    "The loader the cache replaces: open, decode, resize and normalize one JPEG per item, every epoch."

    def __init__(self, files, labels, size):
        from torchvision import transforms as T

        self.files, self.labels = files, labels
        self.tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                             T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.tf(im.convert("RGB")), self.labels[i]


def bench_data(ctx, size=64, batch=64):
    from derma_nb.cache import cache_loader, prepare_dataset, unit_batch
    from derma_nb.data import scan_dataset

    data, label = dataset_dir(ctx)
    t_prep, prep = timed(lambda: prepare_dataset(data, ctx["tmp"] / "prep", image_size=size, force=True))
    files = scan_dataset(data).images
    paths = [files[i].path for i in prep.table.image_id]
    labels = prep.labels()
    n = len(paths)
    naive = torch.utils.data.DataLoader(NaiveJPEGDataset(paths, labels, size), batch_size=batch, shuffle=True,
                                        num_workers=2)
    t_naive, _ = timed(lambda: sum(len(x) for x, _ in naive))
    cached = cache_loader(prep.images, np.arange(n), labels, batch_size=batch, shuffle=True)
    t_cache, _ = timed(lambda: sum(len(unit_batch(x)) for x, _ in cached), repeat=3)
    ctx["prep"] = prep
    return [
        {"section": "data", "what": f"decode + cache {n} images ({label}) at {size} px", "value": round(t_prep, 2),
         "unit": "s", "target": "<= 30 s"},
        {"section": "data", "what": "naive PIL-per-item DataLoader epoch (2 workers)", "value": round(n / t_naive, 1),
         "unit": "img/s"},
        {"section": "data", "what": "decoded-cache loader epoch", "value": round(n / t_cache, 1), "unit": "img/s"},
        {"section": "data", "what": "cache loader / naive loader", "value": round(t_naive / t_cache, 1), "unit": "x",
         "target": ">= 10x"},
    ]


H100_STEP_IMAGES_PER_S = 11421
"The H100's bf16 training step at 224 px alone (reports/benchmarks-cuda.md), the rate the input pipeline must feed."


def bench_loader(ctx, size=224, batch=256, n=2048):
    """What the training input pipeline alone delivers at `size` px: class-balanced shuffled batches of uint8 images
    from a memory-mapped cache, as `derma_nb.cache.cache_loader` feeds a training step (pinned when CUDA is present;
    augmentation then runs on the GPU), and a loop that waits as long as the H100's bf16 step at 224 px for each batch
    (11,421 images/s), fed from the loader directly or through `prefetched`."""
    from derma_nb.cache import cache_loader, prefetched

    n = int(os.environ.get("DERMA_NB_BENCH_LOADER_N", n))
    path = ctx["tmp"] / f"loader-{size}.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    rng = np.random.default_rng(0)
    for s in range(0, n, 256):
        arr[s:s + 256] = rng.integers(0, 256, size=(min(256, n - s), size, size, 3), dtype=np.uint8)
    arr.flush()
    images = np.load(path, mmap_mode="r")  # as the stages open the cache
    labels = rng.integers(0, 7, n)
    pin = ctx["device"].type == "cuda"
    loader = cache_loader(images, np.arange(n), labels, batch_size=batch, shuffle=True, balanced=True, drop_last=True,
                          pin_memory=pin)
    t, got = timed(lambda: sum(len(x) for x, _ in loader), repeat=3)
    rate = got / t
    step = batch / H100_STEP_IMAGES_PER_S  # seconds the H100's step takes for one batch

    def loop(feed) -> float:
        "Images/s of one epoch of a training loop whose step keeps the host waiting `step` s (as a GPU step does)."
        t0, k = time.perf_counter(), 0
        for x, _ in feed:
            time.sleep(step)
            k += len(x)
        return k / (time.perf_counter() - t0)
    rounds = {"plain": [], "ahead": []}
    for _ in range(5):  # interleaved, so that a slow spell of the machine hits both
        rounds["plain"].append(loop(loader))
        rounds["ahead"].append(loop(prefetched(loader)))
    plain, ahead = (statistics.median(rounds[k]) for k in ("plain", "ahead"))
    spread = {k: f"{min(v):,.0f}–{max(v):,.0f}" for k, v in rounds.items()}
    sim = f"a loop whose step waits {1000 * step:.1f} ms a batch (the H100's {H100_STEP_IMAGES_PER_S:,} img/s)"
    return [{"section": "loader", "what": f"uint8 cache -> shuffled, class-balanced batches of {batch} at {size} px "
                                          f"({'pinned' if pin else 'not pinned'}; {n} images, epoch median of 3)",
             "value": round(rate, 1), "unit": "img/s", "target": f">= {H100_STEP_IMAGES_PER_S:,} (an H100's training step)"},
            {"section": "loader", "what": "the same, as memory bandwidth", "value": round(rate * size * size * 3 / 1e9, 2),
             "unit": "GB/s"},
            {"section": "loader", "what": f"{sim}, batches made between steps (median of 5 epochs; range "
                                          f"{spread['plain']})", "value": round(plain, 1), "unit": "img/s"},
            {"section": "loader", "what": f"{sim}, batches from `prefetched`, made during the step (median of 5 epochs, "
                                          f"interleaved with the above; range {spread['ahead']})",
             "value": round(ahead, 1), "unit": "img/s"},
            {"section": "loader", "what": "that loop's rate / the step's, prefetched (batches made between steps)",
             "value": f"{ahead / H100_STEP_IMAGES_PER_S:.0%} ({plain / H100_STEP_IMAGES_PER_S:.0%})", "unit": "",
             "target": ">= 80%"}]


def _prep(ctx, size=64):
    if "prep" not in ctx:
        from derma_nb.cache import prepare_dataset

        data, _ = dataset_dir(ctx)
        ctx["prep"] = prepare_dataset(data, ctx["tmp"] / "prep", image_size=size)
    return ctx["prep"]


def bench_phase1(ctx, n=512, batch=32):
    "Head training per image: from pooled features computed once vs through the frozen backbone every step."
    from derma_nb.cache import unit_batch
    from derma_nb.inference import forward_rows
    from derma_nb.model import build_model, param_groups, split_frozen, train_mode

    dev = ctx["device"]
    prep = _prep(ctx)
    rows = np.arange(min(n, len(prep.images)))
    y = torch.as_tensor(prep.labels()[rows])
    m = build_model(ARCH).to(dev)
    opt = torch.optim.AdamW(param_groups(m, 0, 1e-3))
    x_all = torch.from_numpy(np.ascontiguousarray(prep.images[rows])).permute(0, 3, 1, 2)

    def through_backbone():
        train_mode(m, 0)
        for i in range(0, len(rows), batch):
            loss = torch.nn.functional.cross_entropy(m(unit_batch(x_all[i:i + batch], dev)), y[i:i + batch].to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync(dev)

    trunk, _ = split_frozen(m, 0)  # normalization + the whole backbone, pooled
    t_feat_once, feats = timed(lambda: forward_rows(trunk, prep.images, rows, 128, dev).to(dev).float())

    def from_features():
        for i in range(0, len(rows), batch):
            loss = torch.nn.functional.cross_entropy(m.head(feats[i:i + batch]), y[i:i + batch].to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync(dev)

    through_backbone()  # warm-up: cuDNN's autotuning and lazy initialisation stay out of the figures
    from_features()
    t_bb, _ = timed(through_backbone)
    t_ff, _ = timed(from_features, repeat=3)
    return [
        {"section": "phase1", "what": f"head epoch through frozen {ARCH} ({len(rows)} img, {prep.images.shape[1]} px)",
         "value": round(len(rows) / t_bb, 1), "unit": "img/s"},
        {"section": "phase1", "what": "head epoch from cached features", "value": round(len(rows) / t_ff, 1),
         "unit": "img/s"},
        {"section": "phase1", "what": "features once (one-off cost)", "value": round(t_feat_once, 2), "unit": "s"},
        {"section": "phase1", "what": "from-features / through-backbone per epoch", "value": round(t_bb / t_ff, 1),
         "unit": "x", "target": ">= 20x"},
        {"section": "phase1", "what": "10 epochs incl. feature pass: features / backbone",
         "value": round(10 * t_bb / (t_feat_once + 10 * t_ff), 1), "unit": "x"},
    ]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def training_step(fwd, opt, aug, x8, yb, dev, amp=None, channels_last=True):
    "The loop's own `train_step` on a fixed uint8 batch, with the loop's input path (on-device augment, [0, 1])."
    from derma_nb.cache import unit_batch
    from derma_nb.train import train_step

    scaler = torch.amp.GradScaler(dev.type, enabled=amp == torch.float16)
    loss_fn = torch.nn.CrossEntropyLoss()
    return lambda: train_step(fwd, unit_batch(aug(x8.float() / 255), channels_last=channels_last), yb, opt,
                              loss_fn, scaler, amp)


def recipe_model(dev, channels_last=False):
    "The recipe's network set up for phase 2 (last UNFREEZE stages + head train) and its optimizer."
    from derma_nb.model import build_model, param_groups, train_mode

    m = build_model(ARCH).to(dev)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups(m, UNFREEZE, 3e-4))
    train_mode(m, UNFREEZE)
    return m, opt


def bench_phase2(ctx, size=None, batch=None, steps=None):
    """Phase-2 fine-tuning throughput: channels_last and AMP (CUDA) on/off; and per image, the whole network on
    augmented images (profile full) vs the trained stages alone on the frozen trunk's cached output (profile real)."""
    from derma_nb.cache import BatchAugment
    from derma_nb.model import split_frozen
    from derma_nb.train import train_step

    dev = ctx["device"]
    cuda = dev.type == "cuda"
    size = size or (224 if cuda else 160)
    batch = batch or (256 if cuda else 32)
    steps = steps or (30 if cuda else 4)
    x8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    y = torch.randint(0, 7, (batch,))
    combos = [(False, None), (True, None)] + ([(True, torch.bfloat16), (False, torch.bfloat16)] if cuda else [])
    out = []
    aug = BatchAugment()
    what = f"{ARCH}, last {UNFREEZE} stages, {size} px batch {batch}"
    for cl, amp in combos:
        m, opt = recipe_model(dev, cl)
        step = training_step(m, opt, aug, x8.to(dev), y.to(dev), dev, amp, cl)
        for _ in range(2):
            step()
        sync(dev)
        t, _ = timed(lambda: [step() for _ in range(steps)] and sync(dev))
        out.append({"section": "phase2", "what": f"{what}, whole network, channels_last={cl}, "
                    f"amp={'bf16' if amp else 'off'}", "value": round(steps * batch / t, 1), "unit": "img/s"})
        if cuda:
            out[-1]["peak_gpu_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
    m, opt = recipe_model(dev)
    trunk, top = split_frozen(m, UNFREEZE)
    with torch.no_grad():
        acts = trunk.eval()(x8.to(dev).float() / 255).half()  # what the cache holds (float16)
    net = torch.nn.Sequential(top, m.head)
    scaler = torch.amp.GradScaler(dev.type, enabled=False)
    amp = torch.bfloat16 if cuda else None
    cached = lambda: train_step(net, acts.float(), y.to(dev), opt, torch.nn.CrossEntropyLoss(), scaler, amp)  # noqa
    for _ in range(2):
        cached()
    sync(dev)
    t_c, _ = timed(lambda: [cached() for _ in range(steps)] and sync(dev))
    whole = out[1]["value"] if not cuda else out[2]["value"]  # channels_last (and bf16 on CUDA): the loop's setting
    out += [{"section": "phase2", "what": f"{what}, trained stages on the cached trunk output "
             f"{tuple(acts.shape[1:])}", "value": round(steps * batch / t_c, 1), "unit": "img/s"},
            {"section": "phase2", "what": "cached trunk / whole network per image",
             "value": round(steps * batch / t_c / whole, 1), "unit": "x"}]
    if cuda:  # memory target: 224 px, batch 64 must fit in 8 GB
        m, opt = recipe_model(dev, True)
        torch.cuda.reset_peak_memory_stats()
        step = training_step(m, opt, aug, x8[:64].to(dev), y[:64].to(dev), dev, torch.bfloat16, True)
        step()
        sync(dev)
        out.append({"section": "memory", "what": f"peak GPU memory, {ARCH} {size} px batch 64 phase-2 step (bf16)",
                    "value": round(torch.cuda.max_memory_allocated() / 2**30, 2), "unit": "GiB", "target": "<= 8 GB"})
    return out


def bench_compile(ctx, steps=None):
    """torch.compile vs eager on the phase-2 training step this device would run: steady img/s, compile seconds,
    break-even. The recipe's network, last 2 stages trained; CPU 160 px batch 32; CUDA 224 px batch 256, bf16.
    Compile time = the first two compiled steps minus two steady compiled steps."""
    from derma_nb.cache import BatchAugment

    dev = ctx["device"]
    cuda = dev.type == "cuda"
    size, batch, amp = (224, 256, torch.bfloat16) if cuda else (160, 32, None)
    steps = steps or (30 if cuda else 6)
    # a cold compile, as on a fresh machine: inductor's on-disk caches would otherwise hide most of it
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(ctx["tmp"] / "inductor")
    x8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).to(dev)
    yb = torch.randint(0, 7, (batch,)).to(dev)
    aug = BatchAugment()
    res = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        m, opt = recipe_model(dev, True)
        if mode == "compiled":
            torch._dynamo.reset()
        step = training_step(torch.compile(m) if mode == "compiled" else m, opt, aug, x8, yb, dev, amp)

        try:
            t_first, _ = timed(lambda: [step() for _ in range(2)] and sync(dev))
            t, _ = timed(lambda: [step() for _ in range(steps)] and sync(dev))
        except Exception as e:  # e.g. no C++ compiler for inductor: say so, keep the other sections
            return [{"section": "compile", "what": f"torch.compile failed: {type(e).__name__}: {str(e)[:80]}",
                     "value": "n/a", "unit": ""}]
        res[mode] = (t_first, t / steps)
    what = f"{ARCH} last {UNFREEZE} stages {size} px batch {batch}{', bf16' if amp else ''}"
    (_, e_step), (c_first, c_step) = res["eager"], res["compiled"]
    compile_s = max(c_first - 2 * c_step, 0.0)
    saved = e_step - c_step
    rows = [{"section": "compile", "what": f"{what}: eager", "value": round(batch / e_step, 1), "unit": "img/s"},
            {"section": "compile", "what": f"{what}: torch.compile (steady)", "value": round(batch / c_step, 1),
             "unit": "img/s"},
            {"section": "compile", "what": "torch.compile: one-off compile time (empty inductor cache)",
             "value": round(compile_s, 1),
             "unit": "s"},
            {"section": "compile", "what": "torch.compile pays off after (compile time / time saved per step)",
             "value": round(compile_s / saved) if saved > 0.02 * e_step else "never (steady gain < 2%)",
             "unit": "steps"}]
    return rows


def bench_inference(ctx, size=224):
    "Batch-1 latency (median, p95) and batch-32 throughput: PyTorch eager vs ONNX Runtime."
    from derma_nb.export import _ort_session, export_onnx
    from derma_nb.model import build_model

    dev = ctx["device"]
    m = build_model(ARCH).eval().to(dev)
    path = export_onnx(m.cpu(), ctx["tmp"] / "m.onnx", size)
    m.to(dev)
    sess = _ort_session(path, "cuda" if dev.type == "cuda" else "cpu")
    x1 = torch.randn(1, 3, size, size)
    x32 = torch.randn(32, 3, size, size)
    out = []

    def lat(fn, n):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1000)
        return statistics.median(ts), float(np.percentile(ts, 95))

    n1 = 200  # enough calls for a stable median and p95 on a small CPU too
    with torch.inference_mode():
        xd1, xd32 = x1.to(dev), x32.to(dev)
        med, p95 = lat(lambda: (m(xd1), sync(dev)), n1)
        out.append({"section": "inference", "what": f"PyTorch eager batch 1 at {size} px latency (median / p95)",
                    "value": round(med, 2), "p95": round(p95, 2), "unit": "ms"})
        t32, _ = lat(lambda: (m(xd32), sync(dev)), 3 if dev.type != "cuda" else 20)
        out.append({"section": "inference", "what": "PyTorch eager batch 32 throughput", "value": round(32000 / t32, 1),
                    "unit": "img/s"})
    med_o, p95_o = lat(lambda: sess.run(["logits"], {"image": x1.numpy()}), n1)
    ort = f"ONNX Runtime ({sess.get_providers()[0].replace('ExecutionProvider', '')})"  # CPU where no CUDA build
    out.append({"section": "inference", "what": f"{ort} batch 1 at {size} px latency (median / p95)",
                "value": round(med_o, 2), "p95": round(p95_o, 2), "unit": "ms", "target": "<= PyTorch eager"})
    t32o, _ = lat(lambda: sess.run(["logits"], {"image": x32.numpy()}), 3 if dev.type != "cuda" else 20)
    out.append({"section": "inference", "what": f"{ort} batch 32 throughput", "value": round(32000 / t32o, 1),
                "unit": "img/s"})
    out.append({"section": "inference", "what": f"{ort} / eager batch-1 latency", "value": round(med_o / med, 2),
                "unit": "x", "target": "<= 1"})
    return out


_BENCH = r'''
import json, sys, time, tempfile
from pathlib import Path
tuned = sys.argv[1] == "1"
out = Path(tempfile.mkdtemp())
t = {}
t0 = time.perf_counter()
import clearml
t["import"] = time.perf_counter() - t0
t0 = time.perf_counter()
import os
os.environ["CLEARML_CACHE_DIR"] = str(out)
if tuned:  # what a stage does: the project's clearml.conf and derma_nb's Task.init switches
    os.environ["CLEARML_CONFIG_FILE"] = sys.argv[2]
    from derma_nb.tracking import _init_task
    task = _init_task("bench", "derma-nb-bench", ["bench"], offline=True, task_type="custom")
else:  # ClearML's defaults
    clearml.Task.set_offline(True)
    task = clearml.Task.init(project_name="derma-nb-bench", task_name="bench", auto_connect_frameworks=False,
                             auto_connect_arg_parser=False, auto_resource_monitoring=False)
t["init"] = time.perf_counter() - t0
t0 = time.perf_counter()
import pandas as pd
task.connect({"lr": 1e-3, "epochs": 3}, name="params")
lg = task.get_logger()
for i in range(20):
    lg.report_scalar("loss", "train", 1 / (i + 1), i)
lg.report_table("table", "table", iteration=0, table_plot=pd.DataFrame({"a": [1, 2]}))
task.upload_artifact("history", artifact_object=pd.DataFrame({"a": [1, 2]}), wait_on_upload=True)
t["log"] = time.perf_counter() - t0
t0 = time.perf_counter()
task.close()
t["close"] = time.perf_counter() - t0
print("BENCH" + json.dumps(t))
'''



def bench_frozen(ctx, size=160, batch=128, n=512):
    """The frozen work of training, decide and evaluate (train.frozen_engine): the recipe's trunk (all but the last
    UNFREEZE stages) and the whole network at 160 px, batch 128, through PyTorch eager (NCHW and channels_last) and
    ONNX Runtime, on the same images; the largest difference from PyTorch on them."""
    from derma_nb.inference import on_engine, OrtNet
    from derma_nb.model import build_model, split_frozen

    dev = ctx["device"]
    if dev.type != "cpu":
        return []  # ONNX Runtime serves the frozen work on a CPU only
    m = build_model(ARCH, "none").eval()
    x = torch.rand(n, 3, size, size)
    out = []
    for name, net in (("trunk (frozen in phase 2)", split_frozen(m, UNFREEZE)[0].eval()), ("whole network (views of decide/evaluate)", m)):
        def rate(fn):
            fn(x[:batch])
            t0 = time.perf_counter()
            for s in range(0, n, batch):
                fn(x[s:s + batch])
            return n / (time.perf_counter() - t0)
        with torch.no_grad():
            eager = rate(net)
            ref = torch.cat([net(x[s:s + batch]) for s in range(0, n, batch)])
            net.to(memory_format=torch.channels_last)
            cl = rate(lambda b: net(b.contiguous(memory_format=torch.channels_last)))
            net.to(memory_format=torch.contiguous_format)
            ort_net = on_engine(net, "onnxruntime", x[:32])
            assert isinstance(ort_net, OrtNet), "ONNX Runtime disagreed with PyTorch: see the log"
            ort = rate(ort_net)
            diff = float(max((ort_net(x[s:s + batch]) - ref[s:s + batch]).abs().max() for s in range(0, n, batch)))
        what = f"{ARCH} {name}, {size} px batch {batch}"
        out += [{"section": "frozen", "what": f"{what}: PyTorch eager", "value": round(eager, 1), "unit": "img/s"},
                {"section": "frozen", "what": f"{what}: PyTorch channels_last", "value": round(cl, 1), "unit": "img/s"},
                {"section": "frozen", "what": f"{what}: ONNX Runtime", "value": round(ort, 1), "unit": "img/s"},
                {"section": "frozen", "what": f"{what}: ONNX Runtime / best PyTorch", "value": round(ort / max(eager, cl), 2),
                 "unit": "x", "target": ">= 1.5x"},
                {"section": "frozen", "what": f"{what}: largest difference from PyTorch (outputs up to "
                                              f"{float(ref.abs().max()):.0f})", "value": f"{diff:.1e}", "unit": ""}]
    return out


def tracking_overhead(tuned: bool = True, timeout: float = 600) -> dict:
    "Seconds for import / init / log / close of one small offline task, measured in a fresh Python process."
    with tempfile.TemporaryDirectory() as home:
        # a scratch HOME and no repository around: nothing of the user's is read or written
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
        env.update(HOME=home, USERPROFILE=home, PYTHONPATH=str(ROOT))
        r = subprocess.run([sys.executable, "-c", _BENCH, "1" if tuned else "0", str(ROOT / "clearml.conf")],
                           capture_output=True, text=True, env=env, cwd=home, timeout=timeout)
    line = next((l for l in r.stdout.splitlines() if l.startswith("BENCH")), None)
    if line is None:
        raise RuntimeError(f"benchmark failed: {r.stderr[-2000:]}")
    t = {k: round(v, 3) for k, v in json.loads(line[5:]).items()}
    t["total"] = round(sum(t.values()), 3)
    return t


def bench_tracking(ctx):
    "One small offline ClearML stage in a fresh process: ClearML's defaults vs the project's clearml.conf."
    import importlib.util

    if importlib.util.find_spec("clearml") is None:  # a bare GPU box: the stages' tracking is not installed there
        return [{"section": "tracking", "what": "skipped: clearml is not installed here", "value": "n/a", "unit": ""}]
    rows = []
    for tuned in (False, True):
        t = tracking_overhead(tuned)
        what = "project clearml.conf + stage_task switches" if tuned else "ClearML defaults"
        rows.append({"section": "tracking", "what": f"offline stage, {what}: total (import {t['import']} s, init "
                     f"{t['init']} s, log {t['log']} s, close {t['close']} s)", "value": t["total"], "unit": "s"})
    return rows


def bench_memory(ctx, size=224):
    """Peak RAM of the prepare stage at 224 px, in a fresh process: its own high-water mark (VmHWM; ru_maxrss would
    also count this benchmark's memory, which Linux carries over into a child across fork and exec)."""
    data, label = dataset_dir(ctx)
    code = (f"import re, resource; from pathlib import Path; from derma_nb.cache import prepare_dataset; "
            f"prepare_dataset({str(data)!r}, {str(ctx['tmp'] / 'prep224')!r}, image_size={size}, force=True); "
            f"s = Path('/proc/self/status'); m = re.search(r'VmHWM:\\s+(\\d+) kB', s.read_text()) if s.exists() else None; "
            f"print(m.group(1) if m else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    secs = time.perf_counter() - t0
    peak = int(r.stdout.strip().splitlines()[-1]) / 2**20
    arr = np.load(ctx["tmp"] / "prep224" / "images.npy", mmap_mode="r")
    shutil.rmtree(ctx["tmp"] / "prep224", ignore_errors=True)
    return [{"section": "memory", "what": f"prepare peak RAM, {len(arr)} images ({label}) at {size} px "
             f"(cache {arr.nbytes / 2**30:.2f} GiB on disk, {secs:.1f} s)", "value": round(peak, 2), "unit": "GiB",
             "target": "<= 4 GB (10,015 images)"}]


def bench_pipeline(ctx):
    "Wall time of the README's run command on the sample in a fresh copy, then a no-op `dvc repro`."
    repo = ctx["tmp"] / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "b",
           "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    for c in ("git init -q", "git add -A", "git commit -qm bench"):
        subprocess.run(c, shell=True, cwd=repo, env=env, check=True, capture_output=True)
    t0 = time.perf_counter()
    subprocess.run("derma-nb run", shell=True, cwd=repo, env=env, check=True, capture_output=True)
    t_run = time.perf_counter() - t0
    noop = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run("dvc repro", shell=True, cwd=repo, env=env, check=True, capture_output=True)
        noop.append(time.perf_counter() - t0)
    return [{"section": "pipeline", "what": "main job (`derma-nb run`, sample, fresh copy)", "value": round(t_run, 1),
             "unit": "s", "target": "<= 300 s"},
            {"section": "pipeline", "what": "no-op `dvc repro` (median of 3)", "value": round(statistics.median(noop), 2),
             "unit": "s", "target": "<= 5 s"}]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--out", default=str(ROOT / "reports"), help="folder for benchmarks.json / benchmarks.md")
    ap.add_argument("--data", help="a HAM10000 folder (default: ../shared/data/ham10000 when present, else the "
                                   "synthetic sample)")
    args = ap.parse_args(argv)
    from derma_nb.runtime import pick_device, seed_everything

    seed_everything(0, deterministic=False)
    dev = pick_device("auto")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ctx = {"device": dev, "tmp": Path(tempfile.mkdtemp(prefix="derma-bench-")), "data": args.data}
    rows = []
    fns = {"data": bench_data, "loader": bench_loader, "phase1": bench_phase1, "phase2": bench_phase2, "compile": bench_compile,
           "inference": bench_inference, "frozen": bench_frozen,
           "memory": bench_memory, "tracking": bench_tracking, "pipeline": bench_pipeline}
    for s in args.only:
        if s == "pipeline" and dev.type != "cpu":
            continue  # the CPU pipeline figures come from this project's 2-core machine
        t0 = time.perf_counter()
        new = fns[s](ctx)
        rows += new
        for r in new:
            print(f"{r['section']:9} {r['what']:80} {r['value']:>10} {r['unit']}", flush=True)
        print(f"  ({s}: {time.perf_counter() - t0:.0f} s)", flush=True)
    import onnxruntime
    import torchvision

    info = {"device": str(dev) + (f" ({torch.cuda.get_device_name()})" if dev.type == "cuda" else
                                  f" ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "command": "python benchmarks/bench.py " + " ".join(f"--only {' '.join(args.only)}".split()),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "benchmarks" if dev.type == "cpu" else f"benchmarks-{dev.type}"
    (out / f"{name}.json").write_text(json.dumps({"info": info, "results": rows}, indent=2) + "\n")
    md = [f"# derma-nb benchmarks ({info['device']})", "",
          "| | |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in info.items()] + [
        "", "| section | measurement | value | unit | target |", "|---|---|---:|---|---|"]
    md += [f"| {r['section']} | {r['what']} | {r['value']}{' / ' + str(r['p95']) if 'p95' in r else ''} | "
           f"{r['unit']} | {r.get('target', '')} |" for r in rows]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / (name + '.md')}")
    shutil.rmtree(ctx["tmp"], ignore_errors=True)


if __name__ == "__main__":
    main()
