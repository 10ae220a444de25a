"""``fit(recipe)``: one training run from a data folder to ``runs/<name>/``.

The order: seed, load and split the data, build the model (its weights decide the normalisation), cache
the images, then epochs of ``train_one_epoch`` + ``evaluate`` on val. The first ``freeze_epochs`` train
the new head only; then the whole network is fine-tuned. After every epoch ``last.pt`` holds everything
needed to continue exactly (model, optimizer, scheduler, RNG states, early-stopping state) and
``best.pt`` the best model by the monitored validation metric. At the end the best model is evaluated
on val and test, its predictions saved and the report written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from andon.datasets.dataset import Dataset
from andon.datasets.remap import ClassPlan
from andon.errors import ConfigError, DatasetError
from andon.evaluation.metrics import classification_report, roc_auc
from andon.inspect.card import THRESHOLD_METRICS, ModelCard, PreprocessSpec, default_defect_classes
from andon.models import Checkpoint, Classifier, create_model, load_checkpoint, save_checkpoint
from andon.models.anomaly_build import CHECKPOINT_KEY as ANOMALY_KEY
from andon.models.anomaly_build import checkpoint_state
from andon.training.anomaly import FittedAnomaly, check_anomaly, fit_anomaly, split_scores, with_anomaly
from andon.training.augment import build_augmenter
from andon.training.data import (
    EpochSampler,
    RunData,
    check_training_classes,
    eval_loader,
    load_split_dataset,
    prepare_run_data,
    preprocess_spec,
    split_datasets,
    train_loader,
)
from andon.training.distributed import SINGLE, Rank, ShardedEpochSampler, all_sum, barrier, broadcast, sync_batchnorm
from andon.training.distributed import wrap as ddp_wrap
from andon.training.engine import cross_entropy, evaluate, train_one_epoch
from andon.training.optim import build_criterion, build_optimizer, build_scheduler, class_counts, sample_weights
from andon.training.progress import make_progress, summary_table
from andon.training.recipe import DecisionSection, Recipe
from andon.training.report import decision_table, write_report
from andon.training.rundir import (
    HEADLINE,
    RunDir,
    create_run,
    load_predictions,
    named,
    plan_run,
    read_metrics,
    save_predictions,
    write_metrics,
)
from andon.training.seeding import configure_torch, derive_seed, rng_state, seed_everything, set_rng_state
from andon.training.stopping import StopState, record_epoch, resolve_monitor, stop_due
from andon.training.targets import shortfall, weak_reasons, weak_sentence


@dataclass
class RunResult:
    run_dir: Path
    best_epoch: int
    epochs_run: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> headline
    #: paragraphs on decision targets the validation data could not meet (``andon.training.targets``)
    notes: list[str] = field(default_factory=list)
    #: why the card's thresholds are weak (``ModelCard.threshold_warnings``); empty when they are not
    warnings: list[str] = field(default_factory=list)


@dataclass
class Session:
    """What the epoch loop works on, built once by ``setup_session``."""

    recipe: Recipe
    run: RunDir
    device: torch.device
    data: RunData
    model: Classifier
    card: ModelCard
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    criterion: torch.nn.Module
    #: an EpochSampler, or this rank's ShardedEpochSampler of it in a run on several processes
    sampler: torch.utils.data.Sampler
    loaders: dict[str, torch.utils.data.DataLoader]
    #: train.monitor with auto resolved for this model's classes (``stopping.resolve_monitor``)
    monitor: str
    #: this process's place in a run on several processes (``andon.training.distributed``)
    rank: Rank = SINGLE
    #: the DDP wrapper the training step calls, and whether the backbone was frozen when it was built
    net: torch.nn.Module | None = None
    net_frozen: bool | None = None


EpochCallback = Callable[[int, dict[str, Any]], None]


def fit(
    recipe: Recipe,
    *,
    resume: bool = False,
    console: Console | None = None,
    callbacks: Sequence[EpochCallback] = (),
    oversubscribe: bool = False,
) -> RunResult:
    """Train the recipe's model; with ``resume``, continue the named run from its ``last.pt``.

    ``callbacks`` are called after each epoch's checkpoint with (epoch, metrics row). With ``train.nproc`` above
    1 the run is trained by that many processes (``andon.training.distributed.launch``; ``oversubscribe``
    allows more than the CPU cores); their rank 0 prints to stderr, ``console`` is not used.
    """
    console = console or Console(stderr=True)
    if recipe.train.nproc > 1:
        from andon.training.distributed import launch

        if callbacks:
            raise ConfigError(
                f"train.nproc {recipe.train.nproc}: epoch callbacks run in this process and cannot follow a run "
                "on several processes; train with nproc 1"
            )
        recipe = named(recipe)  # one name for every process (the default one has the time in it)
        plan_run(recipe, resume=resume)  # a folder that is taken or missing fails here, before any process starts
        return launch(recipe, resume=resume, oversubscribe=oversubscribe)
    if recipe.anomaly.only:
        if resume:
            raise ConfigError("an anomaly-only run has no epochs to resume; start it again without --resume")
        from andon.training.anomaly import fit_anomaly_only

        return fit_anomaly_only(recipe, console=console)
    return fit_rank(named(recipe), SINGLE, resume=resume, console=console, callbacks=callbacks)


def fit_rank(
    recipe: Recipe,
    rank: Rank,
    *,
    resume: bool = False,
    console: Console,
    callbacks: Sequence[EpochCallback] = (),
) -> RunResult | None:
    """``fit`` in one process of the run (``SINGLE``: the only one); None on the ranks other than 0.

    Rank 0 makes the run folder, the image cache and every file in it; the others wait for the cache, then
    train in step with it (``andon.training.distributed``).
    """
    run = plan_run(recipe, resume=resume)
    device, dataset, plan, model = prepare(recipe, rank)
    if rank.main:
        create_run(run, recipe)  # only now: bad data, model names or weights leave no folder behind
        console.print(
            f"run {run.path}  (after an interruption: andon train {resume_flags(recipe)})"
            + (f"  [{rank.world} processes, {_threads(rank.threads)} each]" if rank.distributed else ""),
            markup=False,
            highlight=False,
        )
    with make_progress(console) if rank.main else contextlib.nullcontext() as progress:
        if rank.main:
            session = setup_session(recipe, run, device, dataset, plan, model, progress, rank=rank)
        barrier(rank)  # the others open the cache rank 0 filled
        if not rank.main:
            session = setup_session(recipe, run, device, dataset, plan, model, None, rank=rank)
        state, rows = _restore(session) if resume else (StopState(), [])
        _epochs(session, state, rows, progress, console, callbacks)
        if not rank.main:
            _close_workers(session.loaders)
            return None
        result = _finish(session, state, progress)
    console.print(
        summary_table(
            f"run {run.name}: best epoch {result.best_epoch}", result.metrics, [*HEADLINE, *THRESHOLD_METRICS]
        )
    )
    for note in result.notes:
        console.print(f"[yellow]{escape(note)}[/yellow]", highlight=False)
    if result.warnings:
        console.print(f"[bold red]{escape(weak_sentence(result.warnings))}[/bold red]", highlight=False)
    console.print(f"report: {run.path / 'report.html'}")
    return result


def _threads(n: int | None) -> str:
    return "torch's default threads" if n is None else f"{n} thread{'' if n == 1 else 's'}"


def resume_flags(recipe: Recipe) -> str:
    """The command-line flags that continue this run."""
    from andon.training.recipe import default_dict

    runs_dir = (
        ""
        if str(recipe.output.runs_dir) == default_dict()["output"]["runs_dir"]
        else f" --runs-dir {recipe.output.runs_dir}"
    )
    return f"--name {recipe.output.name}{runs_dir} --resume"


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available; use train.device=cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare(recipe: Recipe, rank: Rank = SINGLE) -> tuple[torch.device, Dataset, ClassPlan, Classifier]:
    """Device, seeds, the split data set, its class plan and the model: where bad input shows up, before
    anything is written. On several processes each rank has its CUDA device and its share of the threads."""
    cfg = recipe.train
    device = pick_device(cfg.device)
    if rank.distributed and device.type == "cuda":
        device = torch.device("cuda", rank.local_rank)
    configure_torch(rank.threads if rank.distributed else cfg.threads, device)
    seed_everything(cfg.seed)
    dataset, plan = load_split_dataset(recipe.data)
    check_training_classes(dataset, plan)
    default_defect_classes(plan.classes, recipe.data.defect_classes)  # unknown names fail here, not at the end
    model = create_model(
        recipe.model.name,
        len(plan.classes),
        recipe.model.weights,
        head_groups=plan.head_groups,
        dropout=recipe.model.dropout,
        mean=recipe.model.mean,
        std=recipe.model.std,
    ).to(device)
    check_anomaly(recipe, plan.classes)  # so does an anomaly trunk or weights file that cannot be loaded
    if autocast_dtype(cfg.precision, device) is not None:
        model = model.to(memory_format=torch.channels_last)  # what oneDNN's bf16 convolutions want
    if rank.distributed:
        model = sync_batchnorm(model, device, frozen=frozen_batchnorm(recipe))
    return device, dataset, plan, model


def frozen_batchnorm(recipe: Recipe) -> bool:
    """Whether BatchNorm keeps its stored statistics while training (see train.batchnorm)."""
    mode = recipe.train.batchnorm
    return mode == "frozen" or (mode == "auto" and recipe.model.weights != "none")


def step_options(recipe: Recipe, device: torch.device) -> dict[str, Any]:
    """The options of ``train_one_epoch`` that follow from the recipe (bench/pipeline.py times the same step)."""
    return {"autocast_dtype": autocast_dtype(recipe.train.precision, device), "frozen_bn": frozen_batchnorm(recipe)}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast for ``precision`` bf16, or for auto on a CPU with native bf16 (AVX-512 BF16 / AMX)."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cpu" and _cpu_has_bf16():
        return torch.bfloat16
    return None


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def setup_session(
    recipe: Recipe,
    run: RunDir,
    device: torch.device,
    dataset: Dataset,
    plan: ClassPlan,
    model: Classifier,
    progress: Progress | None = None,
    *,
    rank: Rank = SINGLE,
) -> Session:
    """Cache, loaders, optimizer, scheduler, loss: everything an epoch needs (also used by bench/pipeline.py).

    On several processes the training loader of each rank gives its part of every global batch
    (``ShardedEpochSampler``); ranks other than 0 write nothing and open the cache rank 0 filled.
    """
    cfg = recipe.train
    info = model.weights_info
    spec = preprocess_spec(recipe.model, info.mean, info.std)
    data = prepare_run_data(dataset, plan, spec, run.path, workers=cfg.workers, progress=progress, write=rank.main)
    card = make_card(recipe, run.name, data, spec, weights=info.source)
    counts = class_counts(data.labels[data.indices["train"]], plan.training_classes)
    if cfg.balance != "none" and cfg.prior_correction:
        model.set_training_prior(counts)
    weights = sample_weights(data.labels[data.indices["train"]], counts) if cfg.balance == "sampler" else None
    sampler: torch.utils.data.Sampler = EpochSampler(len(data.indices["train"]), cfg.seed, weights)
    batch, drop_last = cfg.batch_size, None
    if rank.distributed:
        sampler = ShardedEpochSampler(sampler, cfg.batch_size, num_replicas=rank.world, rank=rank.rank)
        batch, drop_last = cfg.batch_size // rank.world, False
    datasets = split_datasets(data, build_augmenter(recipe.augment))
    loaders = {
        "train": train_loader(
            datasets["train"],
            sampler,
            batch_size=batch,
            workers=cfg.workers,
            device=device,
            seed=cfg.seed,
            drop_last=drop_last,
        ),
        "val": eval_loader(datasets["val"], batch_size=2 * cfg.batch_size, workers=cfg.workers, device=device),
        "test": eval_loader(
            datasets["test"], batch_size=2 * cfg.batch_size, workers=cfg.workers, device=device, persistent=False
        ),
    }
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loaders["train"]))
    criterion = build_criterion(cfg, counts, device)
    monitor = resolve_monitor(cfg.monitor, card.classes, card.defect_classes)
    return Session(
        recipe, run, device, data, model, card, optimizer, scheduler, criterion, sampler, loaders, monitor, rank
    )


def make_card(
    recipe: Recipe,
    run_name: str,
    data: RunData,
    spec: PreprocessSpec,
    *,
    weights: str,
    metrics: dict[str, float] | None = None,
) -> ModelCard:
    return ModelCard(
        name=run_name,
        version=f"{run_name}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}",
        classes=data.classes,
        defect_classes=default_defect_classes(data.classes, recipe.data.defect_classes),
        trained_as=data.plan.trained_as,
        preprocess=spec,
        backbone=recipe.model.name,
        weights=weights,
        data_fingerprint=data.dataset.fingerprint(),
        metrics={k: v for k, v in (metrics or {}).items() if math.isfinite(v)},
    )


def _epochs(
    s: Session,
    state: StopState,
    rows: list[dict[str, Any]],
    progress: Progress,
    console: Console,
    callbacks: Sequence[EpochCallback],
) -> None:
    cfg = s.recipe.train
    while state.epoch < cfg.epochs and not state.stopped:
        epoch = state.epoch + 1
        row, report = _run_epoch(s, epoch, progress)
        best = record_epoch(state, epoch, _monitored(row, s.monitor), cfg)  # on every rank: they stop together
        if not s.rank.main:
            continue
        rows.append(row)
        if best:
            _save_best(s, epoch, report)
        write_metrics(s.run.metrics, rows)
        _save_last(s, state)
        console.print(_epoch_line(row, cfg.epochs, state, s.monitor), markup=False, highlight=False)
        for callback in callbacks:
            callback(epoch, row)


def _run_epoch(s: Session, epoch: int, progress: Progress) -> tuple[dict[str, Any], dict[str, float]]:
    frozen = epoch <= s.recipe.train.freeze_epochs
    if frozen:
        s.model.freeze_backbone()
    else:
        s.model.unfreeze_backbone()
    s.sampler.set_epoch(epoch)
    if s.rank.distributed and not s.rank.main:
        # dropout draws differ from rank 0's; rank 0 keeps the single-process stream (saved in last.pt)
        torch.manual_seed(derive_seed(s.recipe.train.seed, epoch, s.rank.rank))
    start = time.perf_counter()
    train = train_one_epoch(
        s.model,
        s.loaders["train"],
        s.criterion,
        s.optimizer,
        s.scheduler,
        s.device,
        epoch,
        progress,
        **step_options(s.recipe, s.device),
        **_distributed_step(s, frozen),
    )
    if not s.rank.main:  # rank 0 validates on the whole split and sends the row
        return broadcast(None, s.rank)
    report, val_loss, monitored = _validate(s, epoch, progress)
    row: dict[str, Any] = {
        "epoch": epoch,
        "phase": "head" if frozen else "full",
        "train_loss": train["train_loss"],
        "train_accuracy": train["train_accuracy"],
        "val_loss": val_loss,
    }
    row.update({f"val_{k}": report[k] for k in HEADLINE})
    row.update({"val_monitor": monitored, "lr": train["lr"], "seconds": round(time.perf_counter() - start, 3)})
    return broadcast((row, report), s.rank)


def _distributed_step(s: Session, frozen: bool) -> dict[str, Any]:
    """The ``train_one_epoch`` options of a rank: the DDP wrapper (built again when the backbone is frozen or
    unfrozen, as DDP averages the parameters that train when it is built) and the sum of the epoch's figures."""
    if not s.rank.distributed:
        return {}
    if s.net is None or s.net_frozen != frozen:
        s.net, s.net_frozen = ddp_wrap(s.model, s.device), frozen
    return {"net": s.net, "all_sum": lambda values: all_sum(values, s.rank)}


def _validate(s: Session, epoch: int, progress: Progress) -> tuple[dict[str, float], float, float]:
    """The validation figures of the model's classes, the validation loss, and the monitored value."""
    y_true, probs = evaluate(s.model, s.loaders["val"], s.device, progress, f"validate {epoch}")
    report = classification_report(y_true, probs, s.card.classes, s.card.defect_classes).headline()
    loss = cross_entropy(y_true, probs)
    return report, loss, loss if s.monitor == "val_loss" else report[s.monitor]


def _monitored(row: dict[str, Any], monitor: str) -> float:
    """The monitored value with higher = better (NaN stays NaN: ``record_epoch`` takes it as the worst)."""
    value = float(row["val_monitor"])
    return -value if monitor == "val_loss" else value


def _epoch_line(row: dict[str, Any], epochs: int, state: StopState, monitor: str = "macro_recall") -> str:
    mark = " *" if state.best_epoch == row["epoch"] else ""
    stop = "  (early stop)" if state.stopped else ""
    chosen_on = "" if monitor == "macro_recall" else f"  {monitor.replace('_', ' ')} {row['val_monitor']:.4g}"
    return (
        f"epoch {row['epoch']}/{epochs} [{row['phase']}]  train loss {row['train_loss']:.4f} "
        f"acc {row['train_accuracy']:.1%}  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.1%} "
        f"macro recall {row['val_macro_recall']:.1%}{chosen_on}  lr {row['lr']:.2e}  "
        f"{row['seconds']:.1f}s{mark}{stop}"
    )


def _checkpoint(s: Session, epoch: int, card: ModelCard, extra: dict[str, Any] | None = None) -> Checkpoint:
    state_dict = {k: v.detach().cpu() for k, v in s.model.state_dict().items()}
    return Checkpoint(
        model_name=s.recipe.model.name,
        num_classes=len(s.card.classes),
        state_dict=state_dict,
        card=card,
        epoch=epoch,
        extra=extra or {},
    )


def _save_best(s: Session, epoch: int, report: dict[str, float]) -> None:
    card = s.card.replace(metrics={f"val_{k}": v for k, v in report.items() if math.isfinite(v)})
    save_checkpoint(s.run.best, _checkpoint(s, epoch, card))


def _save_last(s: Session, state: StopState) -> None:
    extra = {
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "rng": rng_state(),
        "stop": asdict(state),
        "recipe": s.recipe.to_dict(),
    }
    save_checkpoint(s.run.last, _checkpoint(s, state.epoch, s.card, extra))


def _restore(s: Session) -> tuple[StopState, list[dict[str, Any]]]:
    ckpt = load_checkpoint(s.run.last)
    if ckpt.card.data_fingerprint != s.card.data_fingerprint:
        raise DatasetError(
            f"the data under {s.recipe.data.path} changed since run '{s.run.name}' started "
            "(its fingerprint differs); start a new run instead of resuming"
        )
    s.model.load_state_dict(ckpt.state_dict)
    s.optimizer.load_state_dict(ckpt.extra["optimizer"])
    # the schedule's shape comes from the recipe, not the checkpoint: resuming with more epochs stretches
    # the cosine decay from here on (with the same epochs it is the same schedule)
    s.scheduler.load_state_dict({**ckpt.extra["scheduler"], "lr_lambdas": [None] * len(s.scheduler.lr_lambdas)})
    set_rng_state(ckpt.extra["rng"])
    state = StopState(**ckpt.extra["stop"])
    state.stopped = stop_due(state, s.recipe.train)  # the patience given on resume decides
    rows = [_typed(r) for r in read_metrics(s.run.metrics) if int(r["epoch"]) <= state.epoch]
    return state, rows


def _typed(row: dict[str, str]) -> dict[str, Any]:
    """A metrics.csv row with its numbers back; an empty cell (a column added after the run started, such as
    val_monitor) stays out."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value == "" and key not in ("epoch", "phase"):
            continue
        out[key] = int(value) if key == "epoch" else value if key == "phase" else float(value)
    return out


def _finish(s: Session, state: StopState, progress: Progress) -> RunResult:
    """Evaluate the best model on val and test; predictions, final card in best.pt, report."""
    best = load_checkpoint(s.run.best)
    s.model.load_state_dict(best.state_dict)
    headlines: dict[str, dict[str, float]] = {}
    reports = {}
    preds: dict[str, dict[str, np.ndarray]] = {}
    for split in ("val", "test"):
        if len(s.data.indices[split]) == 0:
            continue
        y_true, probs = evaluate(s.model, s.loaders[split], s.device, progress, f"evaluate best on {split}")
        save_predictions(s.run.predictions(split), s.data.paths(split), y_true, probs, s.card.classes)
        preds[split] = {"y_true": y_true, "probs": probs}
        reports[split] = classification_report(y_true, probs, s.card.classes, s.card.defect_classes)
        headlines[split] = reports[split].headline()
    fitted = _fit_anomaly(s, preds, headlines, progress)
    metrics = {f"{split}_{k}": v for split, h in headlines.items() for k, v in h.items()}
    card = make_card(s.recipe, s.run.name, s.data, s.card.preprocess, weights=s.card.weights, metrics=metrics)
    notes: list[str] = []
    # the anomaly band sends about anomaly.false_alarm of the good parts to review besides the classifier's band
    reserve = s.recipe.anomaly.false_alarm if fitted is not None else 0.0
    card = calibrate_card(
        card,
        s.recipe.decision,
        s.run,
        progress,
        notes=notes,
        val_fraction=s.recipe.data.val_fraction,
        review_reserve=reserve,
    )
    if fitted is not None:
        card = with_anomaly(card, fitted)
    for split, pred in preds.items():  # the plant's rates at the thresholds just set
        rates = threshold_rates(card, pred)
        headlines[split].update(rates)
        card = card.replace(metrics={**card.metrics, **{f"{split}_{k}": v for k, v in rates.items()}})
    cfg = s.recipe.decision  # judged on the card's own validation rates, so export can judge it the same way
    card = card.replace(
        threshold_warnings=weak_reasons(card.metrics, max_reject_good=cfg.max_reject_good, max_review=cfg.max_review)
    )
    extra = {} if fitted is None else {ANOMALY_KEY: checkpoint_state(fitted.detector)}
    save_checkpoint(s.run.best, Checkpoint(best.model_name, best.num_classes, best.state_dict, card, best.epoch, extra))
    sources = {split: [s.data.dataset.samples[i].label for i in s.data.indices[split]] for split in reports}
    write_report(s.run, s.recipe, card, reports, best_epoch=state.best_epoch, sources=sources, notes=notes)
    _close_workers(s.loaders)
    return RunResult(s.run.path, state.best_epoch, state.epoch, headlines, notes, list(card.threshold_warnings))


def _fit_anomaly(
    s: Session, preds: dict[str, dict[str, np.ndarray]], headlines: dict[str, dict[str, float]], progress: Progress
) -> FittedAnomaly | None:
    """The good-only detector on the train split's good images (``recipe.anomaly``); its scores join each split's
    predictions (and their files) and its ROC AUC the headline figures. None when disabled or without a good class."""
    if not s.recipe.anomaly.enabled:
        return None
    if not s.card.good_classes:
        progress.console.print("anomaly detector: skipped, no class is a good part (it learns from good parts only)")
        return None
    fitted = fit_anomaly(
        s.recipe,
        s.data,
        s.card,
        classifier=s.model,
        say=lambda m: progress.console.print(m, markup=False, highlight=False),
    )
    for split, pred in preds.items():
        pred["anomaly_score"] = split_scores(fitted.detector, s.data, split)
        save_predictions(
            s.run.predictions(split),
            s.data.paths(split),
            pred["y_true"],
            pred["probs"],
            s.card.classes,
            anomaly_score=pred["anomaly_score"],
        )
        bad = np.isin(pred["y_true"], s.card.defect_indices)
        headlines[split]["anomaly_roc_auc"] = roc_auc(bad, pred["anomaly_score"])
    return fitted


def threshold_rates(card: ModelCard, pred: dict[str, np.ndarray]) -> dict[str, float]:
    """The plant's rates at the card's thresholds on one split's predictions: ``escape_rate`` (defective
    parts passed), ``false_reject_rate`` (good parts rejected) and ``review_rate``; NaN ones left out."""
    rates = decision_table(card, pred).rates
    return {key: getattr(rates, key) for key in THRESHOLD_METRICS if math.isfinite(getattr(rates, key))}


def calibrate_card(
    card: ModelCard,
    cfg: DecisionSection,
    run: RunDir,
    progress: Progress | None,
    *,
    notes: list[str] | None = None,
    val_fraction: float | None = None,
    review_reserve: float = 0.0,
) -> ModelCard:
    """Thresholds calibrated on the best model's validation predictions, or the card unchanged (with why).

    The band meets ``target_escape`` and ``max_false_reject``; when the validation data has too few defective
    parts to verify the escape target, the band is the budget band (``calibrate_budget``: reject_at at the
    false-reject cap, pass_below as low as the review budget less ``review_reserve`` allows: the share another
    signal, the anomaly band, sends to review), or 0.5 / 0.5 without both limits; and
    when the band needs more review than ``max_review`` it is kept (it does what was asked; the card counts as
    weak). Either way one paragraph with the figures and the choices is printed
    and appended to ``notes`` (the report shows it).
    """
    from andon.errors import CalibrationError
    from andon.evaluation.calibration import calibrate_probs
    from andon.evaluation.metrics import defect_score

    if cfg.target_escape is None:
        return card
    if not card.good_classes:
        return card.replace(
            thresholds=card.thresholds.model_copy(
                update={"source": "default: every class is a defect class, every part is rejected"}
            )
        )
    path = run.predictions("val")
    if not path.is_file():
        return card
    val = load_predictions(path)
    bad, scores = np.isin(val["y_true"], card.defect_indices), defect_score(val["probs"], card.defect_indices)
    targets = {
        "target_escape": cfg.target_escape,
        "max_false_reject": cfg.max_false_reject,
        "max_review": cfg.max_review,
        "where": "the validation split",
        "val_fraction": val_fraction,
    }

    def note(paragraph: str) -> None:
        if progress is not None:
            progress.console.print(f"[yellow]{escape(paragraph)}[/yellow]", highlight=False)
        if notes is not None:
            notes.append(paragraph)

    try:
        result = calibrate_probs(
            val["y_true"],
            val["probs"],
            card.classes,
            card.defect_classes,
            target_escape=cfg.target_escape,
            max_false_reject=cfg.max_false_reject,
            source=f"validation split of {run.name}",
        )
    except CalibrationError as exc:
        why = shortfall(bad, scores, error=exc.message, **targets)
        budget = (
            _budget_band(bad, scores, cfg, run.name, review_reserve)
            if why is not None and why.kind == "defective"
            else None
        )
        if budget is not None:
            if progress is not None:
                progress.console.print(f"thresholds: {budget.description}", markup=False, highlight=False)
            note(
                f"Thresholds set to the budget band [{budget.thresholds.defect.pass_below:.6g}, "
                f"{budget.thresholds.defect.reject_at:.6g}) (false rejects <= {cfg.max_false_reject:.1%}, review "
                f"<= {max(0.0, cfg.max_review - review_reserve):.1%} on the validation split"
                + (f", {review_reserve:.1%} of the budget left to the anomaly band" if review_reserve else "")
                + "; it catches "
                f"{1 - budget.escape_rate:.1%} of the validation defects there, not a verified escape rate): "
                + why.paragraph
            )
            return card.replace(thresholds=budget.thresholds)
        note(
            "Thresholds left at 0.5 / 0.5 (P(defect) >= 0.5 rejects, no review band): "
            + (why.paragraph if why is not None else str(exc))
        )
        return card.replace(thresholds=card.thresholds.model_copy(update={"source": f"default ({exc})"}))
    if progress is not None:
        progress.console.print(f"thresholds: {result.description}", markup=False, highlight=False)
    why = shortfall(bad, scores, review_rate=result.review_rate, **targets)
    if why is not None:
        note(
            f"Thresholds kept at [{result.thresholds.defect.pass_below:.6g}, "
            f"{result.thresholds.defect.reject_at:.6g}), "
            f"but the model counts as weak: {why.paragraph}"
        )
    return card.replace(thresholds=result.thresholds)


def _budget_band(bad: np.ndarray, scores: np.ndarray, cfg, run_name: str, reserve: float):
    """The budget band (``calibrate_budget``) when the escape target cannot be verified, or None when the
    recipe sets no false-reject cap or review budget, or the good parts cannot verify the cap."""
    from andon.errors import CalibrationError
    from andon.evaluation.calibration import calibrate_budget

    if cfg.max_false_reject is None or cfg.max_review is None:
        return None
    try:
        return calibrate_budget(
            bad,
            scores,
            max_false_reject=cfg.max_false_reject,
            max_review=max(0.0, cfg.max_review - reserve),
            source=f"validation split of {run_name}",
        )
    except CalibrationError:
        return None


def _close_workers(loaders: dict[str, torch.utils.data.DataLoader]) -> None:
    """Shut persistent workers down now rather than at garbage collection (tests run many fits)."""
    for loader in loaders.values():
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        loader._iterator = None
