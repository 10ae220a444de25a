"""``andon export RUN --out MODEL.onnx [--int8]`` and ``andon info MODEL.onnx [--json]``.

``export`` needs andon[train] (torch); it is imported inside the command. ``info`` is torch-free: onnx and
the card reader only, so it works on a serving box.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("export", no_args_is_help=True)(export)
    app.command("info", no_args_is_help=True)(info)


def export(
    run: Path = typer.Argument(..., help="Training run folder (with best.pt and splits.csv)."),
    out: Path = typer.Option(..., "--out", "-o", help="The .onnx file to write (atomically; nothing on failure)."),
    int8: bool = typer.Option(
        False, "--int8", help="Quantize to int8 (static, QDQ, per-channel), calibrated on training images."
    ),
    max_accuracy_drop: float = typer.Option(
        1.0,
        "--max-accuracy-drop",
        help="With --int8: refuse to write the file if int8 accuracy on the validation "
        "images is more than this many percentage points below fp32.",
    ),
    calibration_images: int = typer.Option(
        128, "--calibration-images", min=1, help="With --int8: training images used to calibrate activation ranges."
    ),
    verify_images: int = typer.Option(
        64, "--verify-images", min=1, help="Validation images on which torch and onnxruntime must agree."
    ),
    eval_images: int | None = typer.Option(
        None, "--eval-images", min=1, help="With --int8: validation images to judge accuracy on (default all)."
    ),
    opset: int = typer.Option(17, "--opset", min=17, help="ONNX opset (17 or newer)."),
    exporter: str = typer.Option(
        "torchscript", "--exporter", help="torch exporter: torchscript (opset 17+) or dynamo (opset 18+)."
    ),
    allow_weak_thresholds: bool = typer.Option(
        False,
        "--allow-weak-thresholds",
        help="Export even if training marked the thresholds weak (too many good "
        "parts rejected or sent to review on validation; see the report).",
    ),
) -> None:
    """Export a training run to one self-describing ONNX file, verified against torch."""
    from rich.console import Console

    from andon.errors import ConfigError, ExportError

    if exporter not in ("torchscript", "dynamo"):
        raise ConfigError(f"--exporter {exporter!r} is not one of torchscript, dynamo")
    weak = weak_thresholds(run)
    if weak and not allow_weak_thresholds:
        raise ExportError(
            f"run {run} has weak thresholds: {'; '.join(weak)}; nothing written. Retrain with more "
            "images or other decision targets (see the paragraph in its report), or export with "
            "--allow-weak-thresholds and recalibrate the file on more labelled parts "
            f"(andon thresholds {out} --calibrate DATA)"
        )
    console = Console(stderr=True, log_path=False)
    with console.status("exporting") as status:

        def progress(message: str) -> None:
            status.update(message)
            console.log(message)

        from andon.models.export import export_run

        report = export_run(
            run,
            out,
            int8=int8,
            max_accuracy_drop=max_accuracy_drop,
            calibration_images=calibration_images,
            verify_images=verify_images,
            eval_images=eval_images,
            opset=opset,
            exporter=exporter,  # type: ignore[arg-type]
            progress=progress,
        )
    _print_report(report)


def weak_thresholds(run: Path) -> list[str]:
    """Why the run's thresholds are weak: the reasons training recorded in its card, or, for a card from before
    they were recorded, its validation rates judged on the run recipe's limits. Empty when they are not."""
    from andon.models import load_checkpoint
    from andon.training.targets import weak_reasons

    best = run / "best.pt"
    if not best.is_file():
        return []  # export_run says what is missing
    card = load_checkpoint(best).card
    if card.threshold_warnings or card.anomaly is not None:  # a card with an anomaly detector recorded its own
        return list(card.threshold_warnings)
    cfg = _run_decision(run)
    return weak_reasons(card.metrics, max_reject_good=cfg.max_reject_good, max_review=cfg.max_review)


def _run_decision(run: Path):
    """The run's decision section (its recipe.yaml over today's defaults; the defaults alone without one)."""
    import yaml

    from andon.errors import ConfigError
    from andon.training.recipe import default_dict, recipe_from_dict

    saved = run / "recipe.yaml"
    try:
        data = yaml.safe_load(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
        return recipe_from_dict(data if isinstance(data, dict) else {}, source=str(saved)).decision
    except (ConfigError, yaml.YAMLError):
        return recipe_from_dict(default_dict()).decision


def _print_report(report) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    p, q = report.parity, report.int8
    rows = [
        ("file", f"{report.path} ({_size(report.size_bytes)})"),
        (
            "graph",
            f"opset {report.opset}, {report.exporter} exporter, outputs {', '.join(report.card.output_names)}, "
            f"map {report.heatmap_size[0]}x{report.heatmap_size[1]}, {report.card.quantization}",
        ),
        (
            "parity",
            f"max |torch - onnxruntime| {p.describe()} on {p.n_images} images, batches "
            f"{', '.join(map(str, p.batch_sizes))}",
        ),
    ]
    if report.card.anomaly is not None:
        a = report.card.anomaly
        rows.append(("anomaly detector", _describe_anomaly(a.model_dump())))
    if q is not None:
        rows.append(
            (
                "int8 accuracy",
                f"{q.fp32_accuracy:.2%} fp32 -> {q.int8_accuracy:.2%} int8 "
                f"({-q.accuracy_drop_pp + 0.0:+.2f} points) on {q.n_eval} images, "
                f"{q.agreement:.1%} same predictions, {q.decision_agreement:.1%} same "
                "pass/review/reject at the card's thresholds"
                + (
                    ""
                    if q.max_anomaly_diff != q.max_anomaly_diff
                    else f", anomaly score within {q.max_anomaly_diff:.3f}"
                ),
            )
        )
        rows.append(
            (
                "int8 speed",
                f"{q.fp32_ms_per_image:.2f} -> {q.int8_ms_per_image:.2f} ms/image "
                f"({q.speedup:.2f}x faster), size {_size(q.fp32_bytes)} -> {_size(q.int8_bytes)} "
                f"({q.size_ratio:.2f}x)",
            )
        )
    rows += [("content hash", report.card.content_hash), ("time", f"{report.seconds:.1f} s")]
    table = Table(show_header=False, box=None, pad_edge=False)
    for key, value in rows:
        table.add_row(key, escape(value))
    Console().print(table)


def info(
    model: Path = typer.Argument(..., help="An .onnx file written by 'andon export'."),
    as_json: bool = typer.Option(False, "--json", help="Print the card and the graph's signature as JSON."),
) -> None:
    """Show the model card and the graph signature of an exported model (no torch needed)."""
    summary = describe(model)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_info(summary)


def describe(path: Path) -> dict:
    """Card, signature, opset, size and hash check of an andon ONNX file; one-line errors for anything else."""
    from andon.errors import ModelFileError
    from andon.inspect.inspector import parse_model
    from andon.inspect.onnxfile import content_hash, read_card

    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist" if not path.exists() else f"{path} is not a file")
    data = path.read_bytes()
    model = parse_model(data, path)
    card = read_card(model, source=str(path))
    actual = content_hash(model)
    return {
        "file": str(path),
        "size_bytes": len(data),
        "opset": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_value(v) for v in model.graph.input if v.name not in {t.name for t in model.graph.initializer}],
        "outputs": [_value(v) for v in model.graph.output],
        "content_hash_ok": actual == card.content_hash,
        "card": card.model_dump(mode="json"),
    }


def _describe_anomaly(a: dict) -> str:
    """One line on the good-only anomaly detector of a card (``AnomalySpec`` as a dict)."""
    trunk = "the classifier's trunk" if a["trunk"] == "classifier" else f"{a['trunk']} ({a['weights']})"
    what = "anomaly only (no classifier)" if a.get("only") else "beside the classifier"
    return (
        f"{a['method']} on {trunk}, blocks {a['layers']}, {a['bank_size']} good patches x {a['dim']} from "
        f"{a['n_good']} good images; {what}; {a['calibration']}"
    )


def _value(value) -> dict:
    import onnx

    tensor = value.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in tensor.shape.dim] if tensor.HasField("shape") else None
    return {"name": value.name, "type": onnx.TensorProto.DataType.Name(tensor.elem_type).lower(), "shape": dims}


def _print_info(s: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from andon.inspect.card import describe_trained_as

    card = s["card"]
    pre = card["preprocess"]
    th = card["thresholds"]
    table = Table(title=f"{s['file']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("name / version", f"{card['name']} {card['version']}"),
        ("classes", ", ".join(card["classes"])),
        ("defect classes", ", ".join(card["defect_classes"])),
        *(
            [("trained as", describe_trained_as(card["trained_as"]) + " (the graph adds up their probabilities)")]
            if card.get("trained_as")
            else []
        ),
        (
            "input",
            f"{pre['input_size'][0]}x{pre['input_size'][1]} (HxW), RGB channel order, NCHW float32, "
            f"colour mode {pre['color_mode']}",
        ),
        ("resize", f"{pre['resize']} ({pre['interpolation']} interpolation, pad value {pre['pad_value']})"),
        ("normalisation", f"mean {_triple(pre['mean'])}, std {_triple(pre['std'])} (on pixels / 255)"),
        (
            "thresholds",
            f"P(defect) pass below {th['defect']['pass_below']:g}, reject at {th['defect']['reject_at']:g}"
            + "".join(f"; {c}: {b['pass_below']:g}/{b['reject_at']:g}" for c, b in th["per_class"].items())
            + (f"; anomaly score: review at {th['anomaly']['pass_below']:g}" if th.get("anomaly") else "")
            + f" ({th['source']})",
        ),
        *([("anomaly detector", _describe_anomaly(card["anomaly"]))] if card.get("anomaly") else []),
        *([("weak thresholds", "; ".join(card["threshold_warnings"]))] if card.get("threshold_warnings") else []),
        ("backbone / weights", f"{card['backbone']} / {card['weights']}"),
        ("quantization", card["quantization"]),
        ("training data", card["data_fingerprint"] or "-"),
        ("metrics", ", ".join(f"{k} {v:.4g}" for k, v in card["metrics"].items()) or "-"),
        ("andon / created", f"{card['andon_version']} / {card['created']}"),
        (
            "content hash",
            card["content_hash"] + ("" if s["content_hash_ok"] else "  MISMATCH: the graph was changed after export"),
        ),
        ("inputs", "; ".join(_sig(v) for v in s["inputs"])),
        ("outputs", "; ".join(_sig(v) for v in s["outputs"])),
        ("opset", ", ".join(f"{d} {v}" for d, v in s["opset"].items())),
        ("file size", _size(s["size_bytes"])),
    ]
    for key, value in rows:
        table.add_row(key, escape(value))
    Console().print(table)


def _sig(v: dict) -> str:
    shape = "?" if v["shape"] is None else "[" + ", ".join(str(d) for d in v["shape"]) + "]"
    return f"{v['name']} {v['type']} {shape}"


def _triple(values: list[float]) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in values) + ")"


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
