"""Data-parallel training (DDP) on the CPU: 2 processes with gloo on 127.0.0.1.

The gradients of 2 ranks with half a batch each, all-reduced, are the single-process gradients on the whole batch;
a short 2-process `two_phase_fit` agrees across ranks, only rank 0 writes, and resumes exactly; `torchrun` launches
`python -m derma_nb.train`. Workers run in spawned processes (fresh interpreters, so no fork after torch threads).
"""
import copy
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from derma_nb.config import CLASSES, seed_everything
from derma_nb.data import load_prepared, make_synthetic_sample, prepare_dataset
from derma_nb.model import build_model, load_model, set_phase
from derma_nb.train import (FitConfig, Phase, class_weights, cleanup_distributed, dist_info, init_distributed,
                            predict_probs, shard_batches, shard_loss, two_phase_fit)

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, port, args):
    "Each spawned worker: torchrun's environment for its rank, then the real `init_distributed`."
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_distributed("gloo", timeout_s=60)
    assert info.rank == rank and info.world_size == WORLD and dist_info() == info
    try:
        fn(rank, *args)
    finally:
        cleanup_distributed()


def spawn(fn, *args, timeout=120):
    "Run fn(rank, *args) on WORLD processes; a failure in any raises here, a hang is killed after `timeout` s."
    ctx = mp.start_processes(_entry, args=(fn, free_port(), args), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{fn.__name__} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def prep_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data = make_synthetic_sample(tmp / "data", lesions={c: 6 for c in CLASSES}, width=64, height=48)
    prepare_dataset(data, tmp / "prep", image_size=32)
    return tmp / "prep"


# --- 1. all-reduced gradients == single-process gradients on the global batch ----------------------------------


def _grad_worker(rank, out):
    torch.manual_seed(0)  # the same model and the same global batch on both ranks
    model = build_model("resnet18")
    # Everything trains, but BatchNorm is in eval mode (running statistics): in train mode each rank would normalize
    # its half with that half's mean and variance, a different function from the whole batch's (and its gradient
    # flows through the batch statistics), so the average of the halves' gradients would not be the whole batch's
    # gradient. Phase 2's train_mode(model, "layer4") has the same effect for layer4's BatchNorm. In eval mode
    # each image's loss depends on that image only, and the gradient of the global batch's mean is the average.
    set_phase(model, "all").eval()
    x = torch.randn(12, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 5, 5, 5, 2, 1])
    w = class_weights(y.numpy())  # class weights: the global batch's weighted mean is not the mean of the shards'
    ref = copy.deepcopy(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    half = slice(rank * 6, rank * 6 + 6)
    loss, _ = shard_loss(ddp(x[half]), y[half], w, label_smoothing=0.1)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    res = {"grads": grads}
    if rank == 0:  # one process, the whole batch, the loop's own loss
        torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)(ref(x), y).backward()
        res["ref"] = {n: p.grad.clone() for n, p in ref.named_parameters() if p.requires_grad}
    torch.save(res, out / f"grads{rank}.pt")


def test_allreduced_gradients_equal_single_process_gradients(tmp_path):
    spawn(_grad_worker, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"grads{r}.pt") for r in range(WORLD))
    ref = r0["ref"]
    assert set(ref) == set(r0["grads"]) and len(ref) == 62  # every parameter of ResNet18, conv1 to fc
    diff = max(float((r0["grads"][n] - ref[n]).abs().max()) for n in ref)
    scale = max(float(ref[n].abs().max()) for n in ref)
    print(f"max |grad_ddp - grad_single| = {diff:.3g} (largest gradient {scale:.3g})")
    assert diff < 1e-5
    for n in ref:  # after the all-reduce the ranks hold the very same gradients
        assert torch.equal(r0["grads"][n], r1["grads"][n]), n


def test_shards_partition_each_epoch():
    b = [shard_batches(53, 8, seed=5, epoch=2, rank=r, world_size=WORLD) for r in range(WORLD)]
    assert len(b[0]) == len(b[1]) == 3  # 27 per rank (53 padded to 54), drop_last: 3 steps each
    seen = [set(sum(x, [])) for x in b]
    assert not seen[0] & seen[1]
    assert shard_batches(53, 8, seed=5, epoch=3, rank=0, world_size=WORLD) != b[0]  # set_epoch reshuffles
    labels = np.arange(53) % 7
    bb = [shard_batches(53, 8, seed=5, epoch=2, rank=r, world_size=WORLD, labels=labels, balanced=True)
          for r in range(WORLD)]
    assert len(bb[0]) == len(bb[1]) == 3


# --- 2. a short 2-process two_phase_fit: ranks agree, only rank 0 writes, resume is exact ----------------------


def cfg(**kw):
    return FitConfig(phase1=Phase(epochs=1, lr=3e-3), phase2=Phase(epochs=1, lr=1e-3, trains="layer4", augment=True),
                     batch_size=8, progress=False, **kw)


def _fit_worker(rank, prep_dir, tmp):
    prep = load_prepared(prep_dir)

    def fresh():  # rank 1 builds other weights on purpose: every rank must start from rank 0's
        seed_everything(rank)
        return build_model("resnet18")

    model = fresh()
    rows = []
    r = two_phase_fit(model, prep, cfg(), tmp / f"out{rank}", arch="resnet18", checkpoint_dir=tmp / f"ck{rank}",
                      on_epoch=rows.append)
    # the same run interrupted after phase 1, then resumed by new processes: all ranks restart from rank 0's last.pt
    cut = two_phase_fit(fresh(), prep, cfg(), tmp / f"cut{rank}", arch="resnet18", stop_after_epochs=1)
    resumed_model = fresh()
    resumed = two_phase_fit(resumed_model, prep, cfg(), tmp / f"cut{rank}", arch="resnet18")
    torch.save({"history": r.history, "best": r.best, "world_size": r.world_size, "callback_rows": rows,
                "state": model.state_dict(), "cut": len(cut.history), "resumed": resumed.history,
                "resumed_state": resumed_model.state_dict()}, tmp / "results" / f"rank{rank}.pt")


def test_two_process_fit_writes_on_rank_0_only_and_resumes(prep_dir, tmp_path):
    (tmp_path / "results").mkdir()
    spawn(_fit_worker, prep_dir, tmp_path)
    r0, r1 = (torch.load(tmp_path / "results" / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert r0["world_size"] == r1["world_size"] == WORLD
    h = r0["history"]
    assert h[["phase", "epoch"]].values.tolist() == [[1, 1], [2, 1]] and np.isfinite(h.train_loss).all()
    pd.testing.assert_frame_equal(h, r1["history"])  # rank 0's numbers on every rank
    assert r0["best"] == r1["best"]
    for k, v in r0["state"].items():  # one model, although rank 1 started from other weights
        assert torch.equal(v, r1["state"][k]), k
    # files, log lines and the callback: rank 0 only
    assert len(r0["callback_rows"]) == 2 and r1["callback_rows"] == []
    assert {p.name for p in (tmp_path / "out0").iterdir()} == {"best.pt", "history.csv"}
    assert {p.name for p in (tmp_path / "ck0").iterdir()} == {"last.pt"}
    assert not any((tmp_path / d).exists() for d in ("out1", "ck1", "cut1"))
    assert len(pd.read_csv(tmp_path / "out0" / "history.csv")) == 2
    # best.pt loads and predicts like the validation that selected it (sharded over the ranks, then gathered)
    prep = load_prepared(prep_dir)
    model, meta = load_model(tmp_path / "out0" / "best.pt")
    assert meta["arch"] == "resnet18" and meta["image_size"] == 32
    p = predict_probs(model, prep.images, prep.rows("val"))
    assert p.shape == (len(prep.rows("val")), len(CLASSES)) and np.allclose(p.sum(1), 1, atol=1e-5)
    from sklearn.metrics import f1_score
    assert f1_score(prep.labels("val"), p.argmax(1), labels=range(7), average="macro",
                    zero_division=0) == pytest.approx(r0["best"]["value"])
    # interrupted after 1 epoch and resumed: the same run as the uninterrupted one
    assert r0["cut"] == 1
    cols = [c for c in h.columns if c not in ("seconds", "images_per_s")]
    pd.testing.assert_frame_equal(r0["resumed"][cols], h[cols])
    for k, v in r0["state"].items():
        assert torch.equal(v, r0["resumed_state"][k]), k


# --- 3. torchrun -m derma_nb.train --params params.yaml ----------------------------------------------------------


def test_torchrun_launches_the_module(prep_dir, tmp_path):
    params = {"seed": 0, "device": "cpu", "prepare": {"out": str(prep_dir), "image_size": 32},
              "model": {"arch": "resnet18"},
              "train": {"phase1": {"epochs": 1, "lr": 3e-3}, "batch_size": 8, "out": str(tmp_path / "model"),
                        "checkpoints": str(tmp_path / "ck"),
                        "phase2": {"epochs": 1, "lr": 1e-3, "trains": "layer4", "augment": True}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "derma_nb.train", "--params", "params.yaml"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "data-parallel: 2 processes (gloo)" in r.stderr
    assert r.stderr.count("phase2 epoch 1/1: loss") == 1 and "[rank 1]" not in r.stderr  # one rank logs
    import json
    m = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert m["world_size"] == WORLD and m["epochs_run"] == 2
    assert (tmp_path / "plots" / "history.csv").exists() and (tmp_path / "ck" / "last.pt").exists()
    load_model(tmp_path / "model" / "best.pt")
