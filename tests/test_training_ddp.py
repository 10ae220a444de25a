"""``andon train --nproc 2``: two real processes (torchrun's launcher, gloo on CPU) train one run.

The two-process run is compared with the same run in one process: in fp32, without dropout and with frozen
BatchNorm, the step of two processes on the two halves of each batch, with averaged gradients, is the
one-process step on the whole batch, so the weights after the run (an epoch with the backbone frozen, one
fine-tuning all of it) agree to float rounding, and so do the figures. A two-process checkpoint resumes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from andon.cli import main
from andon.models import load_checkpoint
from andon.training.distributed import usable_cores
from andon.training.rundir import read_metrics

pytestmark = pytest.mark.slow

LR = 0.001

#: a tiny run: resnet18 from scratch at 32x32 on 63 training images, batch 16 (3 steps an epoch), 2 epochs
RUN_ARGS = [
    "--model",
    "resnet18",
    "--weights",
    "none",
    "--input-size",
    "32",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    *("--set", "train.freeze_epochs=1"),
    *("--set", f"train.lr={LR}"),
    *("--set", "train.workers=0"),
    *("--set", "train.patience=0"),
    # what makes one step of two processes equal to one step of one process (see the module doc)
    *("--set", "train.precision=fp32"),
    *("--set", "train.batchnorm=frozen"),
    *("--set", "model.dropout=0"),
    # no detector or calibration: they run on rank 0 after training, as in one process
    *("--set", "anomaly.enabled=false"),
    *("--set", "decision.target_escape=null"),
]
#: how close the weights of the two runs are (see test_gradients_are_averaged_two_processes_train_like_one)
TOLERANCE = 5e-5


def _train(*args: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(["train", *args])
    return done.value.code


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_shapes_data

    return make_shapes_data(tmp_path_factory.mktemp("ddp") / "data", per_class=30, size=32)


@pytest.fixture(scope="module")
def runs(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same run in one process and in two (two folders, each in its own runs folder)."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    assert _train(str(tiny_data), *RUN_ARGS, "--name", "r", "--runs-dir", str(one)) == 0
    assert _train(str(tiny_data), *RUN_ARGS, "--name", "r", "--runs-dir", str(two), "--nproc", "2") == 0
    return {"one": one / "r", "two": two / "r"}


def _max_difference(a: Path, b: Path) -> float:
    return _differences(a, b)[0]


def _differences(a: Path, b: Path) -> tuple[float, float]:
    """(largest difference of any weight, share of the weights that differ by more than TOLERANCE)."""
    sa, sb = load_checkpoint(a).state_dict, load_checkpoint(b).state_dict
    assert sa.keys() == sb.keys()
    gaps = [(sa[k].double() - sb[k].double()).abs() for k in sa if sa[k].is_floating_point()]
    beyond = sum(int((g > TOLERANCE).sum()) for g in gaps)
    return max(g.max().item() for g in gaps), beyond / sum(g.numel() for g in gaps)


def test_two_processes_write_one_run_folder(runs):
    run = runs["two"]
    assert [p.name for p in run.parent.iterdir()] == ["r"]
    for name in ("recipe.yaml", "splits.csv", "metrics.csv", "best.pt", "last.pt", "predictions_val.npz"):
        assert (run / name).is_file(), name
    assert [p.name for p in (run / "cache").iterdir() if p.suffix == ".u8"] == ["images.u8"]
    rows = read_metrics(run / "metrics.csv")
    assert [(int(r["epoch"]), r["phase"]) for r in rows] == [(1, "head"), (2, "full")]
    recipe = (run / "recipe.yaml").read_text()
    assert "nproc: 2" in recipe


def test_gradients_are_averaged_two_processes_train_like_one(runs):
    """Two halves of every batch with averaged gradients = the whole batch: the weights after both epochs (the
    DDP wrapper is built again when the backbone is unfrozen) and every epoch's figures agree to rounding.

    Rounding, not 1e-5 everywhere: a gradient summed in two halves differs from the whole sum in its last bits,
    and AdamW divides each update by the gradient's running RMS, so a weight whose gradient nearly cancels out
    can take a step of the other sign, up to 2 x lr apart. How many do depends on the CPU's rounding: 1.1e-5
    at most on one machine, 24 of 73,728 entries of a conv weight 1.2e-3 apart on another (3,529 of 11.2 M
    weights, 0.03 %, beyond TOLERANCE). A run whose gradients were not averaged differs everywhere: one process
    on batches of 8 against the same run on batches of 16 has 31 % of its weights beyond TOLERANCE, 6.2e-3 at
    most. So: almost every weight within TOLERANCE, none further than a flipped step or so.
    """
    for name in ("last.pt", "best.pt"):
        worst, share = _differences(runs["one"] / name, runs["two"] / name)
        assert share < 1e-3, f"{name}: {share:.2%} of the weights differ by more than {TOLERANCE}"
        assert worst < 3 * LR, f"{name}: weights {worst:.2e} apart"
    one, two = read_metrics(runs["one"] / "metrics.csv"), read_metrics(runs["two"] / "metrics.csv")
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_recall", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-5), key


def test_resume_a_two_process_run(runs, tmp_path, capfd):
    """A two-process checkpoint (saved by rank 0 from the unwrapped model) resumed on two processes: the finished
    epochs are kept, the next one trains; only rank 0 prints."""
    run = tmp_path / "r"
    shutil.copytree(runs["two"], run)
    capfd.readouterr()
    assert _train("--name", "r", "--runs-dir", str(tmp_path), "--resume", "--epochs", "3", "--nproc", "2") == 0
    err = " ".join(capfd.readouterr().err.split())  # rich wraps long lines
    assert err.count("epoch 3/3 [full]") == 1 and err.count(f"run {run} ") == 1, err
    assert re.search(r"\[2 processes, \d+ threads? each\]", err), err
    assert "epoch 1/" not in err and "epoch 2/" not in err and "Traceback" not in err
    rows, before = read_metrics(run / "metrics.csv"), read_metrics(runs["two"] / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and rows[:2] == before
    assert load_checkpoint(run / "last.pt").epoch == 3
    assert _max_difference(runs["two"] / "last.pt", run / "last.pt") > 1e-4  # epoch 3 trained


def _one_line_error(capfd, *args: str) -> str:
    code = _train(*args)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_nproc_is_one_line(tiny_data, tmp_path, capfd):
    base = (str(tiny_data), *RUN_ARGS, "--runs-dir", str(tmp_path))
    line = _one_line_error(capfd, *base, "--nproc", "0")
    assert "--nproc 0" in line and "1 or more" in line
    too_many = usable_cores() + 1
    line = _one_line_error(capfd, *base, "--nproc", str(too_many), "--set", "train.device=cpu")
    assert f"--nproc {too_many}" in line and "--oversubscribe" in line
    line = _one_line_error(capfd, *base, "--nproc", "2", "--batch-size", "15")
    assert "batch_size 15" in line and "multiple of 2" in line
    line = _one_line_error(capfd, *base, "--nproc", "2", "--set", "train.device=cpu", "--set", "train.backend=nccl")
    assert "nccl" in line and "gloo" in line
    line = _one_line_error(capfd, *base, "--nproc", "2", "--set", "train.backend=mpi")
    assert "train.backend" in line
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


def test_an_error_inside_the_processes_is_one_line(tiny_data, tmp_path, capfd):
    """An error the workers meet (here an unknown backbone, found when each builds its model) stops both and
    reaches the command line as the same one line as in one process."""
    base = (str(tiny_data), *RUN_ARGS, "--runs-dir", str(tmp_path), "--model", "resnet_nope")
    single = _one_line_error(capfd, *base)
    assert _one_line_error(capfd, *base, "--nproc", "2") == single
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_auto_backend_is_nccl_on_cuda():
    from andon.training.distributed import resolve_backend
    from andon.training.recipe import load_recipe

    assert resolve_backend(load_recipe(overrides=["train.device=cuda"])) == ("nccl", "cuda")


@pytest.mark.parametrize("size", [50, 48, 12, 5])
def test_the_ranks_share_out_exactly_the_one_process_batches(size):
    """Rank r of 2 takes the r-th half of every batch one process would use (the last, incomplete one dropped as
    one process drops it), with the same augmentation seeds; a split smaller than one batch is padded."""
    from andon.training.data import EpochSampler
    from andon.training.distributed import ShardedEpochSampler

    base = EpochSampler(size, seed=3)
    base.set_epoch(7)
    order = list(base)
    shards = [ShardedEpochSampler(EpochSampler(size, seed=3), 16, num_replicas=2, rank=r) for r in (0, 1)]
    for shard in shards:
        shard.set_epoch(7)
    parts = [list(shard) for shard in shards]
    assert len(parts[0]) == len(parts[1]) == len(shards[0])
    if size > 16:
        steps = size // 16
        assert len(parts[0]) == 8 * steps
        for step in range(steps):
            together = parts[0][8 * step : 8 * step + 8] + parts[1][8 * step : 8 * step + 8]
            assert together == order[16 * step : 16 * step + 16]
    else:
        assert parts[0] + parts[1] == (order * 2)[: 2 * -(-size // 2)]
    shards[0].set_epoch(8)  # passed on to the EpochSampler: another epoch, another order
    assert list(shards[0]) != parts[0]
