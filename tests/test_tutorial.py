"""docs/tutorial.md, run as written: every command in it, in order, in a fresh folder, as a shell would.

The tutorial is the quality engineer's path from phone photos to a working review station. This test reads
its console blocks (lines starting with ``$ ``; a trailing backslash continues a line) and its files, runs
them one after another with bash in an empty folder, and fails on the first command that does not do what
the page says (its exit status, by default 0). The page's own comments tell the test what a reader does by
hand, in an HTML comment just before a block, ``<!-- test: ... -->``:

* ``exit=N``: the commands of the next block exit with N (a check that finds a problem, on purpose);
* ``background ready=URL-PATH`` / ``background ready=port:N``: the next block's commands keep running (a
  second terminal); the test waits until the service answers there (or the port listens);
* ``file=PATH``: the next block is a file the reader creates (the settings file);
* ``stdin=TEXT``: what the reader types at the next block's prompts (``\\n`` between answers);
* ``skip=REASON``: the next block is not run (installing; it is already installed here);
* ``browser=review`` (no block): what the operator does in the review station, done in a real browser
  (Chromium through Selenium): log in, judge every part in the queue from what the photo really shows.

Between commands the exported shell variables carry over (``export KEY=...``). The only changes the test
makes to the commands are ``SMALL`` (faster settings, listed below) and the ports (free ones instead of 8000
and 5020, so the test can run beside anything). What every command printed goes to
test-artifacts/tutorial/transcript.txt; the screenshots the page shows are taken from the real pages on
the way (docs/tutorial/*.png: ``make tutorial-screenshots`` writes them there, a normal run to
test-artifacts/tutorial/).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from review_support import (
    CHROMIUM,
    DRIVER,
    NO_BROWSER,
    browser_login,
    chromium,
    free_port,
    images_loaded,
    part_on_screen,
    press,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
ARTIFACTS = ROOT / "test-artifacts" / "tutorial"
#: where the screenshots go: docs/tutorial with `make tutorial-screenshots`, else the test's artifacts
SCREENSHOTS = Path(os.environ.get("ANDON_TUTORIAL_SCREENSHOTS") or ARTIFACTS)
#: the test's changes to the page's commands, to keep the suite short (the page's own settings are what a
#: reader runs; these are the same commands on a smaller scale)
SMALL: list[tuple[str, str]] = [
    # the second model trains 10 rounds instead of the recipe's 30 (its figures are not what the step shows)
    (
        "--set data.group_by=manifest --name flange-v2",
        "--set data.group_by=manifest --set train.epochs=10 --name flange-v2",
    ),
]
PORTS = {"8000": "http", "5020": "modbus"}
DIRECTIVE = re.compile(r"<!--\s*test:(.*?)-->", re.S)
FENCE = re.compile(r"^```(\w*)\s*$")
KNOWN = {"exit", "background", "ready", "file", "stdin", "skip", "browser"}


@dataclass
class Step:
    line: int  # in docs/tutorial.md
    kind: str  # run | background | file | browser | skip
    text: str  # the command, the file's content, or the browser action
    options: dict[str, str] = field(default_factory=dict)


def parse_directive(text: str, line: int) -> dict[str, str]:
    options = {}
    for token in shlex.split(text):
        key, _, value = token.partition("=")
        if key not in KNOWN:
            raise ValueError(f"docs/tutorial.md:{line}: unknown test directive {key!r}; known: {sorted(KNOWN)}")
        options[key] = value
    return options


def parse(markdown: str) -> list[Step]:
    """The tutorial's steps, in page order."""
    steps: list[Step] = []
    lines = markdown.splitlines()
    pending: dict[str, str] = {}
    i = 0
    while i < len(lines):
        text = lines[i]
        directive = DIRECTIVE.search(text)
        if directive:
            options = parse_directive(directive.group(1), i + 1)
            if "browser" in options:
                steps.append(Step(i + 1, "browser", options["browser"], options))
            else:
                pending = options
            i += 1
            continue
        fence = FENCE.match(text)
        if not fence:
            i += 1
            continue
        lang, start = fence.group(1), i + 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        options, pending = pending, {}
        if "skip" in options:
            steps.append(Step(start, "skip", "\n".join(body), options))
        elif "file" in options:
            steps.append(Step(start, "file", "\n".join(body) + "\n", options))
        elif lang == "console":
            kind = "background" if "background" in options else "run"
            for line_no, command in commands(body, start):
                steps.append(Step(line_no, kind, command, options))
        elif options:
            raise ValueError(f"docs/tutorial.md:{start}: a test directive before a {lang or 'plain'} block")
    return steps


def commands(body: list[str], start: int) -> list[tuple[int, str]]:
    """The ``$ `` lines of a console block (with their continuations); other lines are shown output."""
    out: list[tuple[int, str]] = []
    current: list[str] | None = None
    for offset, text in enumerate(body, start=1):
        if current is not None:
            current.append(text)
        elif text.startswith("$ "):
            current = [text[2:]]
            first = start + offset
        else:
            continue
        if not text.endswith("\\"):
            out.append((first, "\n".join(current)))
            current = None
    if current is not None:
        out.append((first, "\n".join(current)))
    return out


class Reader:
    """Runs the steps the way a reader at a terminal would, keeping what one command exports for the next."""

    def __init__(self, work: Path, ports: dict[str, int]) -> None:
        self.work = work
        self.ports = ports
        self.env_file = work / ".tutorial-env"
        self.background: list[tuple[Step, subprocess.Popen, Path]] = []
        self.transcript = (ARTIFACTS / "transcript.txt").open("w")
        home = work.parent / "home"
        home.mkdir(exist_ok=True)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ANDON_")},
            "HOME": str(home),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "COLUMNS": "120",
            "TERM": "dumb",
        }
        self.env_file.write_text("")

    def adapt(self, text: str) -> str:
        for old, new in SMALL:
            text = text.replace(old, new)
        for port, name in PORTS.items():
            text = re.sub(rf"(?<!\d){port}(?!\d)", str(self.ports[name]), text)
        return text

    def log(self, step: Step, text: str) -> None:
        self.transcript.write(f"\n### docs/tutorial.md:{step.line} ({step.kind})\n{text}\n")
        self.transcript.flush()

    def run(self, step: Step) -> str:
        command = self.adapt(step.text)
        script = f"set -o pipefail\nsource {shlex.quote(str(self.env_file))}\n{command}\n"
        script += f"__rc=$?; export -p > {shlex.quote(str(self.env_file))}; exit $__rc\n"
        stdin = step.options.get("stdin", "").replace("\\n", "\n")
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.work,
            env=self.env,
            input=stdin + ("\n" if stdin else ""),
            capture_output=True,
            text=True,
            timeout=900,
            start_new_session=True,  # no controlling terminal: password prompts read the reader's typing (stdin)
        )
        output = done.stdout + done.stderr
        self.log(step, f"$ {command}\n{output}[exit {done.returncode}]")
        expected = int(step.options.get("exit", "0"))
        assert done.returncode == expected, (
            f"docs/tutorial.md:{step.line}: `{command}` exited {done.returncode}, the page says {expected}:\n"
            + output[-4000:]
        )
        assert "Traceback (most recent call last)" not in output, f"docs/tutorial.md:{step.line}: {output[-4000:]}"
        return output

    def start(self, step: Step) -> None:
        command = self.adapt(step.text)
        log = ARTIFACTS / f"background-{step.line}.log"
        script = f"source {shlex.quote(str(self.env_file))}\nexec {command}\n"
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=self.work,
            env=self.env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.background.append((step, proc, log))
        self.log(step, f"$ {command} &  (log: {log.name})")
        ready = self.adapt(step.options.get("ready", ""))
        deadline = time.monotonic() + 120
        while ready:
            assert proc.poll() is None, f"docs/tutorial.md:{step.line}: `{command}` stopped:\n{log.read_text()[-4000:]}"
            if ready.startswith("port:"):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", int(ready[5:]))) == 0:
                        break
            else:
                try:
                    if httpx.get(f"http://127.0.0.1:{self.ports['http']}{ready}", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            assert time.monotonic() < deadline, f"docs/tutorial.md:{step.line}: not ready at {ready} in 120 s"
            time.sleep(0.25)

    def write(self, step: Step) -> None:
        path = self.work / step.options["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.adapt(step.text))
        self.log(step, f"(file {step.options['file']})\n{path.read_text()}")

    def stop(self) -> None:
        for step, proc, log in reversed(self.background):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as the reader stops it
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            self.log(step, f"(stopped; its output)\n{log.read_text()[-3000:]}")
        self.transcript.close()


# ------------------------------------------------------------------------------------------ the browser


def operator_reviews_the_queue(reader: Reader, driver) -> int:
    """Log in as the tutorial's operator and judge every part in the queue from the truth of the photo the
    camera sent (the folder it lies in): a defect is confirmed (D), a good part is a false alarm (G)."""
    work, url = reader.work, f"http://127.0.0.1:{reader.ports['http']}"
    frames = sorted(p for p in (work / "new-parts").rglob("*.jpg"))
    database = sqlite3.connect(work / "andon-data" / "andon.db")
    browser_login(driver, url, "olga", "plant-olga-2026")
    wait_for(driver, lambda d: d.find_elements("css selector", "#part .part, .empty"))
    judged = 0
    while (current := part_on_screen(driver)) is not None:
        wait_for(driver, images_loaded)
        if judged == 0:
            driver.save_screenshot(str(SCREENSHOTS / "review-station.png"))
        (part_id,) = database.execute("select part_id from inspections where id = ?", (current,)).fetchone()
        frame = frames[int(part_id.rsplit("-", 1)[1]) % len(frames)]
        press(driver, "g" if frame.parent.name == "ok" else "d")
        wait_for(driver, lambda d, c=current: part_on_screen(d) != c or d.find_elements("css selector", ".empty"), 15)
        judged += 1
    database.close()
    return judged


def engineer_screenshots(reader: Reader, driver) -> None:
    """The dashboard, as the tutorial's engineer sees it, and the training report."""
    url = f"http://127.0.0.1:{reader.ports['http']}"
    driver.get(url + "/")
    log_out = "form[action='/logout'] button"
    wait_for(driver, lambda d: d.find_elements("css selector", log_out))
    driver.find_element("css selector", log_out).click()  # olga's "Log out"
    browser_login(driver, url, "erik", "plant-erik-2026")
    wait_for(driver, lambda d: d.find_elements("css selector", "a[href='/dashboard']"))  # an engineer's menu
    driver.get(url + "/dashboard")
    wait_for(driver, lambda d: d.find_elements("css selector", "main.dashboard img"))
    for image in driver.find_elements("css selector", "main.dashboard img"):  # the charts load lazily
        driver.execute_script("arguments[0].loading = 'eager'", image)
    charts_drawn = (
        "return [...document.querySelectorAll('main.dashboard img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    wait_for(driver, lambda d: d.execute_script(charts_drawn), 30)
    driver.save_screenshot(str(SCREENSHOTS / "dashboard.png"))
    report_screenshot(driver, reader.work / "runs" / "flange-v1" / "report.html", SCREENSHOTS / "report.png")


def report_screenshot(driver, report: Path, png: Path) -> None:
    """The training report from its decisions at the model's limits on: what section 4 of the page reads."""
    driver.get(report.as_uri())
    wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete")
    heading = driver.execute_script(
        "const h = [...document.querySelectorAll('h2')].find(h => h.textContent.startsWith('Decisions'));"
        "if (h) { h.scrollIntoView(); } return h ? h.textContent : null;"
    )
    assert heading, f"{report} has no section on the decisions at the model's limits"
    time.sleep(0.5)
    driver.save_screenshot(str(png))


# ------------------------------------------------------------------------------------------------ tests


def test_the_page_parses_into_steps():
    """Every step the page holds is one the test knows how to run, and the page covers the whole path."""
    steps = parse(TUTORIAL.read_text())
    runs = [s.text for s in steps if s.kind in ("run", "background")]
    for needed in (
        "andon data photos",
        "andon data check",
        "andon train",
        "andon export",
        "andon thresholds",
        "andon serve",
        "andon camera-sim",
        "andon line-sim",
        "andon review export",
    ):
        assert any(r.startswith(needed) for r in runs), f"the tutorial runs no `{needed}`"
    assert [s.text for s in steps if s.kind == "browser"] == ["review", "screenshots"]
    for name in ("review-station.png", "dashboard.png", "report.png"):
        assert f"tutorial/{name}" in TUTORIAL.read_text(), f"the tutorial does not show {name}"
        assert (ROOT / "docs" / "tutorial" / name).is_file(), f"docs/tutorial/{name} is missing"


def test_a_directive_the_test_does_not_know_is_refused():
    with pytest.raises(ValueError, match="unknown test directive 'exits'"):
        parse("<!-- test: exits=1 -->\n```console\n$ true\n```\n")
    steps = parse("<!-- test: exit=1 -->\n```console\n$ false \\\n  --x\nsome output\n$ true\n```\n")
    assert [(s.kind, s.text, s.options) for s in steps] == [
        ("run", "false \\\n  --x", {"exit": "1"}),
        ("run", "true", {"exit": "1"}),
    ]


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason=NO_BROWSER)
def test_the_tutorial_runs_word_for_word(tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    work = tmp_path / "plant"
    work.mkdir()
    reader = Reader(work, {"http": free_port(), "modbus": free_port()})
    try:
        with chromium(1440, 900) as driver:
            for step in parse(TUTORIAL.read_text()):
                if step.kind == "run":
                    reader.run(step)
                elif step.kind == "background":
                    reader.start(step)
                elif step.kind == "file":
                    reader.write(step)
                elif step.kind == "browser" and step.text == "review":
                    judged = operator_reviews_the_queue(reader, driver)
                    assert judged > 0, "the operator found nothing to review"
                    reader.log(step, f"(the operator judged {judged} parts in the browser)")
                elif step.kind == "browser" and step.text == "screenshots":
                    engineer_screenshots(reader, driver)
                    reader.log(step, "(screenshots of the dashboard and the report)")
    finally:
        reader.stop()
