"""Data-parallel training (DDP) on the CPU: 2 processes with gloo on 127.0.0.1.

DDP's own gradient averaging over 2 ranks with half a batch each equals the single-process gradient on the whole
batch; a short 2-process `two_phase_fit` agrees across ranks and only rank 0 writes; `torchrun` launches
`derma-nb train` (the one training entry point). Workers run in spawned processes (fresh interpreters).
"""
import copy
import json
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

from derma_nb.cache import load_prepared, prepare_dataset
from derma_nb.config import CLASSES, PhaseParams, TrainParams
from derma_nb.inference import predict_probs
from derma_nb.runtime import seed_everything
from derma_nb.distributed import ShardedSampler, cleanup_distributed, init_distributed, ranks, wrap
from derma_nb.model import build_model, load_model, set_trainable
from derma_nb.sample import make_synthetic_sample
from derma_nb.train import two_phase_fit

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
    r = init_distributed("gloo", timeout_s=60)
    assert r.rank == rank and r.world_size == WORLD and ranks() == r
    try:
        fn(rank, *args)
    finally:
        cleanup_distributed()


def spawn(fn, *args, timeout=180):
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


# --- 1. DDP's gradient average == the single-process gradient on the global batch -------------------------------


def _grad_worker(rank, out):
    torch.manual_seed(0)  # the same model and the same global batch on both ranks
    model = build_model("resnet18")
    # Everything trains, BatchNorm in eval mode (running statistics): in train mode each rank would normalize its
    # half with that half's statistics, a different function from the whole batch's. In eval mode each image's loss
    # depends on that image only, so the average of the halves' mean-loss gradients is the global mean's gradient.
    set_trainable(model, "all").eval()
    x = torch.randn(12, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 5, 5, 5, 2, 1])
    ref = copy.deepcopy(model)
    ddp = wrap(model, torch.device("cpu"))
    assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
    half = slice(rank * 6, rank * 6 + 6)
    torch.nn.functional.cross_entropy(ddp(x[half]), y[half], label_smoothing=0.1).backward()
    res = {"grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
    if rank == 0:  # one process, the whole batch
        torch.nn.functional.cross_entropy(ref(x), y, label_smoothing=0.1).backward()
        res["ref"] = {n: p.grad.clone() for n, p in ref.named_parameters()}
    torch.save(res, out / f"grads{rank}.pt")


def test_ddp_gradient_average_equals_single_process_gradient(tmp_path):
    spawn(_grad_worker, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"grads{r}.pt") for r in range(WORLD))
    ref = r0["ref"]
    assert set(ref) == set(r0["grads"]) and len(ref) == 62  # every parameter of ResNet18, conv1 to the head
    diff = max(float((r0["grads"][n] - ref[n]).abs().max()) for n in ref)
    assert diff < 1e-5, diff
    for n in ref:  # after the all-reduce the ranks hold the very same gradients
        assert torch.equal(r0["grads"][n], r1["grads"][n]), n


def test_shards_partition_each_epoch_and_are_equally_long():
    order = torch.randperm(53, generator=torch.Generator().manual_seed(5)).tolist()
    shards = [list(ShardedSampler(order, r, WORLD)) for r in range(WORLD)]
    assert len(shards[0]) == len(shards[1]) == 27  # 53 padded to 54
    assert set(shards[0]) | set(shards[1]) == set(range(53))
    assert len(set(shards[0]) & set(shards[1])) == 1  # the one item repeated to even them out


# --- 2. a short 2-process two_phase_fit: ranks agree, only rank 0 writes ----------------------------------------


def cfg():
    return TrainParams(phase1=PhaseParams(epochs=1, lr=3e-3), batch_size=8,
                       phase2=PhaseParams(epochs=1, lr=1e-3, unfreeze=1, augment=True))


def _fit_worker(rank, prep_dir, tmp):
    prep = load_prepared(prep_dir)
    seed_everything(rank)  # rank 1 builds other weights on purpose: every rank must start from rank 0's
    model = build_model("resnet18")
    rows = []
    r = two_phase_fit(model, prep, cfg(), tmp / f"out{rank}", checkpoint_dir=tmp / f"ck{rank}",
                      on_epoch=rows.append)
    torch.save({"history": r.history, "best": r.best, "world_size": r.world_size, "callback_rows": rows,
                "state": model.state_dict()}, tmp / "results" / f"rank{rank}.pt")


def test_two_process_fit_agrees_across_ranks_and_writes_on_rank_0_only(prep_dir, tmp_path):
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
    assert len(r0["callback_rows"]) == 2 and r1["callback_rows"] == []  # files and the callback: rank 0 only
    assert {p.name for p in (tmp_path / "out0").iterdir()} == {"best.pt"}
    assert {p.name for p in (tmp_path / "ck0").iterdir()} == {"last.pt", "best.pt"}
    assert not any((tmp_path / d).exists() for d in ("out1", "ck1"))
    prep = load_prepared(prep_dir)
    model, meta = load_model(tmp_path / "out0" / "best.pt")
    p = predict_probs(model, prep.images, prep.rows("val"))
    from sklearn.metrics import f1_score
    assert f1_score(prep.labels("val"), p.argmax(1), average="macro", zero_division=0) == \
        pytest.approx(r0["best"]["value"])


# --- 3. torchrun runs the one training entry point --------------------------------------------------------------


def test_torchrun_launches_derma_nb_train(prep_dir, tmp_path):
    params = {"seed": 0, "device": "cpu", "prepare": {"out": str(prep_dir), "image_size": 32},
              "model": {"arch": "resnet18", "weights": "none"},
              "train": {"phase1": {"epochs": 1, "lr": 3e-3}, "batch_size": 8, "out": str(tmp_path / "model"),
                        "checkpoints": str(tmp_path / "ck"),
                        "phase2": {"epochs": 1, "lr": 1e-3, "unfreeze": 1, "augment": True}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "derma_nb.cli", "train"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "data-parallel: 2 processes (gloo)" in r.stderr
    assert r.stderr.count("phase2 epoch 1/1: loss") == 1  # one rank speaks
    m = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert m["world_size"] == WORLD and m["epochs_run"] == 2
    assert (tmp_path / "plots" / "history.csv").exists() and (tmp_path / "ck" / "last.pt").exists()
    load_model(tmp_path / "model" / "best.pt")
