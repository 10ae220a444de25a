"""``andon review export``: operators' verdicts back into training data (the feedback loop)."""

from __future__ import annotations

from pathlib import Path

import typer

review_app = typer.Typer(
    help="The review station's data: export reviewed frames as a labelled data set.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")


@review_app.command("export", no_args_is_help=True)
def export(
    out: Path = typer.Argument(..., help="New folder for the data set (must not exist, or be empty)."),
    since: str | None = typer.Option(
        None,
        "--since",
        help="Verdicts given at or after: 2026-11-01, 2026-11-01T06:00 (plant time) or an age such as 7d.",
    ),
    until: str | None = typer.Option(None, "--until", help="Verdicts given before (same forms)."),
    line: str | None = typer.Option(None, "--line", help="Only this line."),
    camera: str | None = typer.Option(None, "--camera", help="Only this camera."),
    merge_with: Path | None = typer.Option(
        None,
        "--merge-with",
        help="The original data set (folder or CSV; "
        "best: the run's splits.csv, whose splits are kept): also write "
        "combined.csv for 'andon train OUT/combined.csv --set "
        "data.group_by=manifest'.",
    ),
    val: float = typer.Option(0.15, "--val", help="Share of reviewed parts for validation."),
    test: float = typer.Option(0.15, "--test", help="Share of reviewed parts held out for testing."),
    seed: int = typer.Option(0, "--seed", help="Split seed (the split depends only on it and the part ids)."),
    config: Path | None = typer.Option(None, "--config", help="Service settings file (as for 'andon serve')."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Service data folder (default ./andon-data)."),
    database_url: str | None = typer.Option(None, "--database-url", help="Service database URL."),
) -> None:
    """Reviewed frames become a labelled data set: images/<label>/, reviewed.csv (path,label,split,group with
    the part as group), provenance.csv and export.json. False alarms are labelled with the good class (ok);
    can't-tell frames are left out."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from andon.cli._service import service_settings
    from andon.cli._timespec import parse_time
    from andon.service.domain import open_service
    from andon.service.review.export import export_reviewed, reviewed_rows

    start, end = parse_time(since, name="--since"), parse_time(until, name="--until")
    settings = service_settings(config, data_dir, database_url)
    console = Console(stderr=True)
    with open_service(settings) as service, service.sessions() as session:
        total = len(reviewed_rows(session, start, end, line_id=line, camera_id=camera))
        with Progress(
            TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
        ) as bar:
            task = bar.add_task("export", total=total)
            report = export_reviewed(
                session,
                service.store,
                out,
                since=start,
                until=end,
                line_id=line,
                camera_id=camera,
                merge_with=merge_with,
                val=val,
                test=test,
                seed=seed,
                progress=lambda: bar.advance(task),
            )
    labels = ", ".join(f"{k} {v}" for k, v in sorted(report.labels.items()))
    console.print(
        f"exported {report.exported} frames to {out} ({labels}); left out: "
        f"{report.skipped_cant_tell} can't tell, {report.skipped_no_image} without a stored image"
    )
    if merge_with is not None:
        console.print(
            f"combined.csv: {report.merged_original} original + {report.exported} reviewed samples; "
            f"train with: andon train {out / 'combined.csv'} --set data.group_by=manifest"
        )
