"""The same training run on 1 and on 2 processes (``andon train --nproc``): figures and wall time side by side.

    python -m bench.ddp                      # 600 sample images, 64x64, Lite0 ImageNet, 4 epochs, seeds 0,1
    python -m bench.ddp --nproc 1,2 --seeds 0,1,2 --epochs 6 --count 1200 --size 96

Generates the project's sample data (``andon.datasets.synth``, the same seed each time) and trains the default
recipe's pipeline (balanced sampling, bf16 where the CPU has it, frozen BatchNorm with pretrained weights) with
``fit()`` once per (seed, nproc), anomaly detector off, everything else as ``andon train`` would. ``batch_size`` is
the global batch in every run, so a step of 2 processes sees the images a step of 1 process sees. Reported per
run: test accuracy, test macro recall and val loss of the best epoch, the training seconds (the epochs, from
metrics.csv) and the wall time of the whole ``fit()`` call (with 2 processes: starting them, each importing torch
and opening the cache, and rank 0's final evaluation and report). The seeds' spread is the noise the 1- vs
2-process difference should be compared with. A machine with fewer cores than processes is refused unless
--oversubscribe; on 2 cores the 2 processes get one thread each, so expect no speed-up there.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import cpu_model


def run_once(data: Path, runs: Path, *, seed: int, nproc: int, args: argparse.Namespace) -> dict:
    from rich.console import Console

    from andon.training.fit import fit
    from andon.training.recipe import load_recipe
    from andon.training.rundir import read_metrics

    name = f"s{seed}-n{nproc}"
    recipe = load_recipe(
        values={
            "data.path": str(data),
            "model.name": args.model,
            "model.weights": "imagenet",
            "model.input_size": [args.size, args.size],
            "train.epochs": args.epochs,
            "train.batch_size": args.batch_size,
            "train.seed": seed,
            "train.nproc": nproc,
            "train.workers": 0,
            "train.patience": 0,
            "anomaly.enabled": False,
            "output.runs_dir": str(runs),
            "output.name": name,
        }
    )
    start = time.perf_counter()
    result = fit(recipe, console=Console(file=io.StringIO()), oversubscribe=args.oversubscribe)
    wall = time.perf_counter() - start
    rows = read_metrics(runs / name / "metrics.csv")
    best = next(r for r in rows if int(r["epoch"]) == result.best_epoch)
    return {
        "seed": seed,
        "nproc": nproc,
        "test_accuracy": result.metrics["test"]["accuracy"],
        "test_macro_recall": result.metrics["test"]["macro_recall"],
        "val_loss": float(best["val_loss"]),
        "best_epoch": result.best_epoch,
        "train_s": sum(float(r["seconds"]) for r in rows),
        "wall_s": wall,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| processes | seed | test accuracy | test macro recall | val loss (best epoch) | epochs (s) | fit() wall (s)"
        " |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(results, key=lambda r: (r["nproc"], r["seed"])):
        lines.append(
            f"| {r['nproc']} | {r['seed']} | {r['test_accuracy']:.1%} | {r['test_macro_recall']:.1%} | "
            f"{r['val_loss']:.4f} | {r['train_s']:.1f} | {r['wall_s']:.1f} |"
        )
    for n in sorted({r["nproc"] for r in results}):
        mine = [r for r in results if r["nproc"] == n]
        acc = [r["test_accuracy"] for r in mine]
        spread = f" (seeds {min(acc):.1%}-{max(acc):.1%})" if len(acc) > 1 else ""
        lines.append(
            f"| {n}, mean | | {statistics.mean(acc):.1%}{spread} | "
            f"{statistics.mean(r['test_macro_recall'] for r in mine):.1%} | "
            f"{statistics.mean(r['val_loss'] for r in mine):.4f} | {statistics.mean(r['train_s'] for r in mine):.1f} | "
            f"{statistics.mean(r['wall_s'] for r in mine):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", default="1,2", help="process counts to compare, e.g. 1,2")
    parser.add_argument("--seeds", default="0,1", help="training seeds (the data and its split stay the same)")
    parser.add_argument("--count", type=int, default=600, help="sample images to generate")
    parser.add_argument("--size", type=int, default=64, help="image and model input side in pixels")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch (split between processes)")
    parser.add_argument("--model", default="efficientnet_lite0", help="backbone; ImageNet weights")
    parser.add_argument("--oversubscribe", action="store_true", help="allow more processes than CPU cores")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from andon.datasets.synth import generate

    nprocs = [int(n) for n in args.nproc.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        data = Path(tmp) / "data"
        generate(data, count=args.count, size=args.size, seed=0)
        results = []
        for seed in seeds:
            for n in nprocs:
                r = run_once(data, Path(tmp) / "runs", seed=seed, nproc=n, args=args)
                print(json.dumps(r), flush=True)
                results.append(r)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\n{args.count} sample images {args.size}x{args.size}, {args.model} ImageNet, {args.epochs} epochs, "
        f"global batch {args.batch_size}; {cpu_model()}, {os.cpu_count()} CPUs; load average at the end {load:.1f}\n"
    )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
