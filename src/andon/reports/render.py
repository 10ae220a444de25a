"""The shift report as a standalone, printable HTML file (styles and chart inside), and as PDF.

The HTML needs nothing else to open or print: the chart is an embedded PNG, the styles include a print
layout for A4. The PDF is that page printed by headless Chromium (Debian's ``chromium``), when present: the
same document, so the two can never disagree.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from andon import __version__
from andon.errors import ConfigError
from andon.fileio import write_atomic
from andon.reports.shift import ShiftReport, interval

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(Path(__file__).parent / "templates")), autoescape=select_autoescape(["html"])
    )
    env.filters["local"] = lambda v, fmt="%Y-%m-%d %H:%M": "" if v is None else v.astimezone().strftime(fmt)
    env.filters["pct"] = lambda v, d=1: "–" if v is None else f"{100 * v:.{d}f}%"
    env.globals["interval"] = interval
    return env


def to_html(report: ShiftReport) -> str:
    chart = None
    if report.frames:
        from andon.service.quality.charts import rate_charts_png

        chart = base64.b64encode(rate_charts_png(report.rates, "hour", width=9, height=6)).decode()
    return _env().get_template("shift.html").render(r=report, chart=chart, version=__version__)


def write_html(report: ShiftReport, path: Path) -> Path:
    write_atomic(Path(path), to_html(report))
    return Path(path)


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def write_pdf(html_path: Path, pdf_path: Path, *, timeout: float = 120.0) -> Path:
    """Print ``html_path`` to ``pdf_path`` with headless Chromium (no network: the page is self-contained)."""
    browser = find_chromium()
    if browser is None:
        raise ConfigError(
            "no Chromium to print the PDF with (apt-get install chromium); the HTML report prints from any browser"
        )
    pdf_path = Path(pdf_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{pdf_path.name}.", suffix=".tmp", dir=pdf_path.parent or ".")
    os.close(fd)
    with tempfile.TemporaryDirectory(prefix="andon-chromium-") as profile:
        cmd = [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-pdf-header-footer",
            f"--user-data-dir={profile}",
            f"--print-to-pdf={tmp}",
            Path(html_path).resolve().as_uri(),
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            Path(tmp).unlink(missing_ok=True)
            raise ConfigError(f"Chromium did not print the PDF within {timeout:.0f} s") from None
    if done.returncode != 0 or Path(tmp).stat().st_size == 0:
        Path(tmp).unlink(missing_ok=True)
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(f"Chromium could not print the PDF (exit {done.returncode}): {tail[0][:200]}")
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, pdf_path)
    return pdf_path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
