"""``andon report --shift ...``: the shift report (HTML, and PDF through headless Chromium)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    shift: str | None = typer.Option(
        None, "--shift", help="DATE/NAME (2026-11-25/A), 'last' (the latest finished shift) or 'current'."
    ),
    shifts: str = typer.Option(
        "A=06:00-14:00,B=14:00-22:00,C=22:00-06:00", "--shifts", help="The shift calendar, in plant time."
    ),
    start: str | None = typer.Option(None, "--from", help="Instead of --shift: start (ISO time, plant time)."),
    end: str | None = typer.Option(None, "--to", help="Instead of --shift: end (ISO time, or an age like 1h)."),
    line: str | None = typer.Option(None, "--line", help="Only this line (default: all lines)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="HTML file to write (default shift-report-<line>-<date>-<shift>.html)."
    ),
    pdf: bool = typer.Option(False, "--pdf", help="Also print it to PDF beside the HTML (needs chromium)."),
    config: Path | None = typer.Option(None, "--config", help="Service settings file (as for 'andon serve')."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Service data folder (default ./andon-data)."),
    database_url: str | None = typer.Option(None, "--database-url", help="Service database URL."),
) -> None:
    """Counts, rates, parts, review outcomes, top defect classes, escapes found by review, models in use and
    hourly p-charts for one shift: the record ISO 9001 / IATF 16949 audits ask for."""
    from andon.cli._service import service_settings
    from andon.cli._timespec import parse_time
    from andon.errors import ConfigError
    from andon.reports import shifts as cal
    from andon.reports.render import write_html, write_pdf
    from andon.reports.shift import build
    from andon.service.domain import open_service

    if (shift is None) == (start is None):
        raise ConfigError("give either --shift (e.g. 2026-11-25/A or last) or --from/--to")
    if shift is not None:
        period = cal.resolve(shift, cal.parse_shifts(shifts))
        begin, finish, title = period.start, period.end, f"Shift report: {period.label}"
        stem = f"{period.day.isoformat()}-{period.name}"
    else:
        begin, finish = parse_time(start, name="--from"), parse_time(end or "0m", name="--to")
        if finish <= begin:
            raise ConfigError(f"--to ({finish:%Y-%m-%d %H:%M}) must be after --from ({begin:%Y-%m-%d %H:%M})")
        title = "Inspection report"
        stem = f"{begin.astimezone():%Y-%m-%dT%H%M}"
    out = out or Path(f"shift-report-{line or 'all'}-{stem}.html")
    settings = service_settings(config, data_dir, database_url)
    with open_service(settings) as service, service.sessions() as session:
        result = build(session, begin, finish, line_id=line, title=title)
    write_html(result, out)
    typer.echo(
        f"{out}: {result.frames} frames, {result.parts} parts, reject {_pct(result.rate('reject'))}, "
        f"review {_pct(result.rate('review'))}, {result.reviewed}/{result.flagged} flagged frames reviewed, "
        f"{len(result.escapes)} escapes found"
    )
    if pdf:
        typer.echo(str(write_pdf(out, out.with_suffix(".pdf"))))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"
