"""Does the data pipeline starve the model? Training epoch time with the real loader against compute only.

    python -m bench.pipeline [--data DIR] [--model mobilenet_v2] [--input-size 128] [--batch-size 32]
                             [--workers 2] [--threads N] [--rounds 5]

Side by side, same model, batch size, optimizer and number of steps:

- real epoch: ``train_one_epoch`` on the run's loader (image cache + loader worker processes +
  augmentation + ``to_tensor``), as ``andon train`` runs it;
- compute only: the same steps on batches made beforehand and held in memory as tensors;
- loader only: the same loader with no model, and a loader that decodes and resizes every file every
  epoch (what the cache saves).

The ratio real / compute-only is the figure: 1.00 means the pipeline costs nothing on top of the model.
Without --data a synthetic set (``andon.datasets.synth``, 256x256 PNG) is generated in a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
from rich.console import Console

from andon.inspect.preprocess import Preprocessor
from andon.training.augment import build_augmenter
from andon.training.engine import train_one_epoch
from andon.training.fit import prepare, setup_session, step_options
from andon.training.recipe import load_recipe
from andon.training.rundir import create_run, plan_run


class DecodeEveryTime(torch.utils.data.Dataset):
    """The uncached alternative: read, decode and resize the file on every access."""

    def __init__(self, paths: list[Path], pre: Preprocessor, augmenter) -> None:
        self.paths, self.pre, self.augmenter = paths, pre, augmenter

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        image = self.augmenter(self.pre.load(self.paths[index].read_bytes()), seed)
        return torch.from_numpy(self.pre.to_tensor(image)), 0


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="class-folder data set (default: generated synthetic data)")
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--weights", default="none", help="none, imagenet or a .pth (speed does not depend on it)")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of (real epoch, compute-only epoch), interleaved so "
        "that load from other processes hits both alike",
    )
    p.add_argument("--count", type=int, default=600, help="synthetic images when --data is not given")
    return p.parse_args()


def _timed_loader(loader, sampler, epoch: int) -> float:
    sampler.set_epoch(epoch)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    args = _args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="andon-bench-") as tmp:
        data = args.data
        if data is None:
            from andon.datasets.synth import generate

            data = Path(tmp) / "synth"
            generate(data, count=args.count, size=256)
        values = {
            "data.path": str(data),
            "model.name": args.model,
            "model.weights": args.weights,
            "model.input_size": args.input_size,
            "train.batch_size": args.batch_size,
            "train.workers": args.workers,
            "train.threads": args.threads,
            "train.epochs": 2 * args.rounds + 1,
            "train.freeze_epochs": 0,
            "output.runs_dir": str(Path(tmp) / "runs"),
            "output.name": "bench",
        }
        recipe = load_recipe(values={k: v for k, v in values.items() if v is not None})
        run = plan_run(recipe, resume=False)
        device, dataset, plan, model = prepare(recipe)
        create_run(run, recipe)
        start = time.perf_counter()
        s = setup_session(recipe, run, device, dataset, plan, model)
        cache_s = time.perf_counter() - start
        loader, steps = s.loaders["train"], len(s.loaders["train"])
        images = steps * args.batch_size
        threads = torch.get_num_threads()

        s.sampler.set_epoch(0)
        batches = [(x.clone(), y.clone()) for x, y in loader]  # made beforehand: the compute-only input
        options = step_options(recipe, device)
        real, compute = [], []
        for epoch in range(1, args.rounds + 1):
            s.sampler.set_epoch(epoch)
            real.append(
                train_one_epoch(s.model, loader, s.criterion, s.optimizer, s.scheduler, device, epoch, **options)[
                    "train_seconds"
                ]
            )
            compute.append(
                train_one_epoch(s.model, batches, s.criterion, s.optimizer, s.scheduler, device, epoch, **options)[
                    "train_seconds"
                ]
            )
        loader_only = _timed_loader(loader, s.sampler, 1)
        paths = [dataset.samples[i].path for i in s.data.indices["train"]]
        uncached = torch.utils.data.DataLoader(
            DecodeEveryTime(paths, Preprocessor(s.data.spec), build_augmenter(recipe.augment)),
            batch_size=args.batch_size,
            sampler=s.sampler,
            num_workers=args.workers,
            drop_last=True,
        )
        uncached_s = _timed_loader(uncached, s.sampler, 1)

    out = io.StringIO()
    out.write(
        f"data {data if args.data else f'synthetic {args.count} x 256x256 PNG'}: {len(paths)} training "
        f"images, {steps} steps of {args.batch_size}\n"
    )
    out.write(
        f"model {args.model} {args.input_size}x{args.input_size}, {threads} torch threads, "
        f"{args.workers} loader workers, device {device}, autocast {options['autocast_dtype']}\n"
    )
    out.write(f"cache fill (decode + resize once, {args.workers} processes): {cache_s:.2f} s\n")
    for i, (r, c) in enumerate(zip(real, compute), 1):
        out.write(
            f"round {i}: real epoch {r:.2f} s ({images / r:.1f} img/s), compute only {c:.2f} s "
            f"({images / c:.1f} img/s), ratio {r / c:.2f}\n"
        )
    out.write(
        f"loader only, cached: {loader_only:.2f} s ({images / loader_only:.0f} img/s); "
        f"decoding every epoch: {uncached_s:.2f} s ({images / uncached_s:.0f} img/s)\n"
    )
    out.write(
        f"real / compute-only, best epochs: {min(real):.2f} / {min(compute):.2f} s = "
        f"{min(real) / min(compute):.2f}; medians: {median(real):.2f} / {median(compute):.2f} s = "
        f"{median(real) / median(compute):.2f}  (1.00 = no data stall)\n"
    )
    console.print(out.getvalue(), markup=False, highlight=False, end="")


if __name__ == "__main__":
    main()
