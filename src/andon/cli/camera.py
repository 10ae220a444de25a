"""``andon camera-sim``: a simulated line camera posting frames to the service at a fixed rate.

Open loop, like a real camera: a frame is due every 1/fps seconds whether or not the previous answer has
come back (up to ``--in-flight`` requests at once; a frame due while all are busy is counted as dropped,
as a camera with a full buffer would drop it). Each frame carries an Idempotency-Key, so the one retry
after a connection error or a 503 cannot create a duplicate record.

Synthetic frames know the truth (whether the generator drew a defect), and so do images from a folder sorted
like a training folder (FOLDER/ok/..., FOLDER/<defect>/...), so the summary also judges the line: missed
defects (defective frames passed), false rejects (good frames rejected), reviews, and the reject rate against
the share of defective frames.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import typer

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def register(app: typer.Typer) -> None:
    app.command("camera-sim")(camera_sim)


def camera_sim(
    folder: Path | None = typer.Argument(
        None,
        help="Images to send, in name order, looping; sorted into class folders (ok/, scratch/, ...) they "
        "carry their truth. Without images here (or without DIR), synthetic parts are rendered.",
    ),
    fps: float = typer.Option(2.0, "--fps", min=0.01, max=1000.0, help="Frames per second (fixed arrival rate)."),
    url: str = typer.Option("http://localhost:8000", "--url", help="The service's base URL."),
    camera_id: str = typer.Option("cam1", "--camera-id"),
    line_id: str = typer.Option("line1", "--line-id"),
    key: str | None = typer.Option(
        None,
        "--key",
        envvar="ANDON_CAMERA_KEY",
        help="This camera's API key (env ANDON_CAMERA_KEY); none in open mode.",
    ),
    count: int = typer.Option(0, "--count", min=0, help="Stop after this many frames (0: run until Ctrl-C)."),
    size: str | None = typer.Option(
        None,
        "--size",
        help="Frame size WxH, e.g. 2448x2048: images are resized, "
        "synthetic frames rendered at it (default 640x512 for synthetic frames).",
    ),
    defect_rate: float = typer.Option(
        0.2, "--defect-rate", min=0.0, max=1.0, help="Share of synthetic frames with a defect."
    ),
    part_prefix: str | None = typer.Option(None, "--part-prefix", help="Send part_id PREFIX-<n> with each frame."),
    in_flight: int = typer.Option(8, "--in-flight", min=1, max=256, help="Requests outstanding at most."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic frames."),
    quiet: bool = typer.Option(False, "--quiet", help="Only the summary, not one line per frame."),
) -> _Stats:
    """Post frames to /v1/inspections at --fps and print each verdict. Synthetic frames, and images sorted into
    class folders, know whether they hold a defect: the summary then counts false rejects, missed defects and
    reviews against that truth."""
    import httpx
    from rich.console import Console

    console = Console()
    wh = _parse_wh(size) if size else None
    frames = FrameSource(folder, wh, defect_rate, seed)
    console.print(f"camera {camera_id} on {line_id} -> {url} at {fps:g} fps ({frames.describe()})")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    stats = _Stats(frames.truth_words())
    client = httpx.Client(base_url=url, headers=headers, timeout=30.0)
    pool = ThreadPoolExecutor(max_workers=in_flight)
    slots = threading.Semaphore(in_flight)
    period = 1.0 / fps
    start = time.perf_counter()
    n = 0
    try:
        while count == 0 or n < count:
            due = start + n * period
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            data, truth = frames.next_frame()
            params = {"camera_id": camera_id, "line_id": line_id}
            if part_prefix:
                params["part_id"] = f"{part_prefix}-{n}"
            if not slots.acquire(blocking=False):
                stats.add("dropped", None, truth)
                n += 1
                continue

            def job(i: int = n, body: bytes = data, p: dict = params, t: bool | None = truth) -> None:
                try:
                    _post(client, i, body, p, stats, console, quiet, t)
                finally:
                    slots.release()

            pool.submit(job)
            n += 1
    except KeyboardInterrupt:
        pass
    finally:
        pool.shutdown(wait=True)
        client.close()
    console.print(stats.summary(time.perf_counter() - start), highlight=False)
    return stats


def _post(
    client, i: int, body: bytes, params: dict, stats: _Stats, console, quiet: bool, truth: bool | None = None
) -> None:
    import httpx

    key = str(uuid.uuid4())
    headers = {
        "Content-Type": "image/jpeg" if body[:2] == b"\xff\xd8" else "application/octet-stream",
        "Idempotency-Key": key,
    }
    t0 = time.perf_counter()
    for attempt in range(2):
        try:
            r = client.post("/v1/inspections", content=body, params=params, headers=headers)
        except httpx.TransportError as exc:
            if attempt == 0:
                time.sleep(0.5)
                continue
            stats.add("error", None, truth)
            console.print(f"#{i} [red]connection failed[/red]: {exc}")
            return
        if r.status_code == 503 and attempt == 0:
            time.sleep(float(r.headers.get("retry-after", "1")))
            continue
        break
    ms = (time.perf_counter() - t0) * 1000.0
    if r.status_code in (200, 201):
        v = r.json()
        stats.add(v["decision"], ms, truth)
        if not quiet:
            colour = {"pass": "green", "review": "yellow", "reject": "red"}[v["decision"]]
            drawn = "" if truth is None else f"  ({stats.words[2]})" if truth else "  (good part)"
            console.print(
                f"#{i} [{colour}]{v['decision']:6}[/{colour}] {v['label']:>12} "
                f"P(defect) {v['defect_score']:.2f}  {ms:6.1f} ms  {v['id']}{drawn}"
            )
    else:
        stats.add(f"http {r.status_code}", ms, truth)
        try:
            detail = r.json().get("message", r.text)
        except ValueError:
            detail = r.text[:200]
        console.print(f"#{i} [red]{r.status_code}[/red] {detail}")


class FrameSource:
    """Frames from a folder (looping), or rendered synthetic parts."""

    def __init__(self, folder: Path | None, wh: tuple[int, int] | None, defect_rate: float, seed: int) -> None:
        import numpy as np

        self.files = (
            sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
            if folder is not None and folder.is_dir()
            else []
        )
        if folder is not None and not folder.exists():
            from andon.errors import ConfigError

            raise ConfigError(f"folder {folder} does not exist")
        #: truth per file, when the folder is sorted like a training folder (FOLDER/<class>/image): an image in a
        #: good class's folder (ok, good, ...) is a good part, one in any other class's folder a defective one
        self.truths = _folder_truths(folder, self.files) if self.files else []
        self.wh = wh
        self.defect_rate = defect_rate
        self.rng = np.random.default_rng(seed)
        self.i = 0

    def describe(self) -> str:
        if self.files:
            sorted_by_class = " sorted by class (truth known)" if self.truths[0] is not None else ""
            return f"{len(self.files)} images{sorted_by_class}"
        w, h = self.wh or (640, 512)
        return f"synthetic {w}x{h} parts, {self.defect_rate:.0%} with defects"

    def truth_words(self) -> tuple[str, str, str]:
        """Where the truth comes from, and the summary's and each frame's words for a defective frame."""
        if self.files:
            return ("the folders' classes", "in a defect class's folder", "defect folder")
        return ("the generator's truth", "with a defect drawn", "defect drawn")

    def next(self) -> bytes:
        return self.next_frame()[0]

    def next_frame(self) -> tuple[bytes, bool | None]:
        """The next frame's bytes and its truth: True when a defect was drawn into it (or it lies in a defect
        class's folder), False for a good part, None for images whose truth is not known."""
        from andon.inspect.pixels import encode_jpeg, resize

        truth: bool | None = None
        if self.files:
            path = self.files[self.i % len(self.files)]
            truth = self.truths[self.i % len(self.files)]
            self.i += 1
            data = path.read_bytes()
            if self.wh is None:
                return data, truth
            from andon.inspect.decoding import decode

            image = resize(decode(data), *self.wh, "area")
        else:
            image, defect = self._render()
            truth = defect is not None
        return encode_jpeg(image, quality=90), truth

    def _render(self):
        from andon.datasets.synth.defects import DEFECTS
        from andon.datasets.synth.render import render_sample
        from andon.datasets.synth.surfaces import SURFACES

        w, h = self.wh or (640, 512)
        defect = str(self.rng.choice(list(DEFECTS))) if self.rng.random() < self.defect_rate else None
        image, _ = render_sample(self.rng, str(self.rng.choice(list(SURFACES))), defect, (h, w))
        return image, defect


class _Stats:
    def __init__(
        self, words: tuple[str, str, str] = ("the generator's truth", "with a defect drawn", "defect drawn")
    ) -> None:
        #: where the truth comes from, and what a defective frame is called, for the summary
        self.words = words
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.latencies: list[float] = []
        #: (truth, outcome) counts of frames whose truth is known (True: a defect was drawn)
        self.judged: Counter[tuple[bool, str]] = Counter()

    def add(self, outcome: str, ms: float | None, truth: bool | None = None) -> None:
        with self.lock:
            self.counts[outcome] += 1
            if ms is not None:
                self.latencies.append(ms)
            if truth is not None:
                self.judged[(truth, outcome)] += 1

    def line_figures(self) -> dict[str, float] | None:
        """The line's figures against the generator's truth, over the frames that got a decision; None when
        no frame's truth is known."""
        decided = {k: v for k, v in self.judged.items() if k[1] in ("pass", "review", "reject")}
        n = sum(decided.values())
        if n == 0:
            return None
        defective = sum(v for (t, _), v in decided.items() if t)
        good = n - defective
        count = lambda truth, outcome: decided.get((truth, outcome), 0)  # noqa: E731
        rejects = count(True, "reject") + count(False, "reject")
        reviews = count(True, "review") + count(False, "review")
        return {
            "frames": n,
            "defective": defective,
            "good": good,
            "rejects": rejects,
            "reviews": reviews,
            "false_rejects": count(False, "reject"),
            "missed": count(True, "pass"),
            "reject_rate": rejects / n,
            "review_rate": reviews / n,
            "defect_rate": defective / n,
            "false_reject_rate": count(False, "reject") / good if good else float("nan"),
            "escape_rate": count(True, "pass") / defective if defective else float("nan"),
        }

    def truth_summary(self) -> str:
        """One line: what the line did against what the generator drew ('' when no truth is known)."""
        f = self.line_figures()
        if f is None:
            return ""
        pct = lambda v: "-" if v != v else f"{v:.1%}"  # noqa: E731
        return (
            f"against {self.words[0]} ({f['frames']} decided frames, {f['defective']} {self.words[1]}, "
            f"{pct(f['defect_rate'])}): rejected {f['rejects']} ({pct(f['reject_rate'])}), to review "
            f"{f['reviews']} ({pct(f['review_rate'])}), false rejects {f['false_rejects']} of {f['good']} good "
            f"parts ({pct(f['false_reject_rate'])}), missed defects {f['missed']} of {f['defective']} "
            f"({pct(f['escape_rate'])})"
        )

    def summary(self, seconds: float) -> str:
        import numpy as np

        total = sum(self.counts.values())
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        lat = ""
        if self.latencies:
            p50, p99 = np.percentile(self.latencies, [50, 99])
            lat = f"; latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        truth = self.truth_summary()
        return f"{total} frames in {seconds:.1f} s: {parts or 'none'}{lat}" + (f"\n{truth}" if truth else "")


def _folder_truths(folder: Path, files: list[Path]) -> list[bool | None]:
    """Each file's truth when every image lies one level down in a class folder and one of the classes is a
    good one (ok, good, pass, normal, free): True for a defect class, False for the good class. Otherwise (loose
    images, deeper trees, no good class) None for every file: the summary then judges nothing."""
    from andon.inspect.card import GOOD_CLASS_NAMES

    classes = [p.relative_to(folder).parts for p in files]
    if any(len(parts) != 2 for parts in classes):
        return [None] * len(files)
    names = {parts[0].lower() for parts in classes}
    if not names & GOOD_CLASS_NAMES:
        return [None] * len(files)
    return [parts[0].lower() not in GOOD_CLASS_NAMES for parts in classes]


def _parse_wh(text: str) -> tuple[int, int]:
    from andon.errors import ConfigError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r} is not WxH, e.g. 2448x2048") from None
    if not (16 <= w <= 16384 and 16 <= h <= 16384):
        raise ConfigError(f"--size {text} is outside 16-16384 pixels per side")
    return w, h
