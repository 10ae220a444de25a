"""``andon serve``: the inspection service (uvicorn), with workers and threads sized for the machine."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import typer

from andon.errors import ConfigError

LOOPBACK = "127.0.0.1"


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    config: Path | None = typer.Option(
        None, "--config", help="YAML/JSON settings file (keys as in ANDON_* env vars, lower-case, without the prefix)."
    ),
    host: str | None = typer.Option(
        None,
        "--host",
        help="Address to bind (default 127.0.0.1). Without any API "
        "key the service binds to loopback whatever this says.",
    ),
    port: int | None = typer.Option(None, "--port", help="TCP port (default 8000)."),
    model: Path | None = typer.Option(
        None, "--model", help="An exported .onnx file: registered, and promoted when the registry has no active model."
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Registry, images and the SQLite database (default ./andon-data)."
    ),
    database_url: str | None = typer.Option(
        None,
        "--database-url",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://andon@db/andon (default SQLite in the data dir).",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="uvicorn worker processes (default 1: one process "
        "with an inference thread pool uses the cores and keeps one model in RAM).",
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request."),
) -> None:
    """Run the service: cameras POST frames to /v1/inspections; API docs at /docs."""
    import uvicorn

    from andon.service import memory
    from andon.service.settings import Settings

    memory.limit_arenas(2)  # before any thread starts: one malloc arena per thread would grow RSS

    settings = Settings.load(
        config, host=host, port=port, model=model, data_dir=data_dir, database_url=database_url, workers=workers
    )
    settings = prepare(settings)
    _banner(settings)
    common = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=access_log,
        log_config=_log_config(settings.log_level),
        timeout_keep_alive=30,
        timeout_graceful_shutdown=20,
        limit_concurrency=4 * (settings.inference_threads + settings.queue_size) + 64,
    )
    if settings.workers == 1:
        from andon.service.app import create_app

        uvicorn.run(create_app(settings), **common)
        return
    uvicorn.run("andon.service.app:create_app_from_environment", factory=True, workers=settings.workers, **common)


def prepare(settings):
    """Once, before any worker starts: migrate, register --model, decide the bind address."""
    from andon.service.auth import any_active_key, open_mode
    from andon.service.domain import open_service
    from andon.service.runtime import ModelRuntime

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open_service(settings) as service:
        with service.sessions() as session:
            has_keys = not open_mode(session, allow_after_keys=settings.allow_open_mode_after_keys)
            all_revoked = has_keys and not any_active_key(session)
        if settings.model is not None:
            from andon.service import memory

            ModelRuntime(service.registry, settings).bootstrap(settings.model)
            memory.trim()  # the validation load is gone; give its pages back before the service loads the model
    changes: dict = {"model": None}
    if all_revoked:
        typer.secho(
            "every API key is revoked: every API route refuses until a key is created "
            "('andon keys create --role engineer'); the service does not fall back to open mode",
            fg=typer.colors.YELLOW,
            err=True,
        )
    if not has_keys and not _is_loopback(settings.host):
        typer.secho(
            f"no API keys are configured: binding to {LOOPBACK} only, not {settings.host}. Create keys "
            "with 'andon keys create --role camera --camera-id CAM' (and an engineer key) to serve the "
            "network.",
            fg=typer.colors.YELLOW,
            err=True,
        )
        changes["host"] = LOOPBACK
    elif not has_keys:
        typer.secho(
            "no API keys are configured: open mode on loopback only (management routes still need an engineer key)",
            fg=typer.colors.YELLOW,
            err=True,
        )
    settings = settings.model_copy(update=changes)
    if settings.workers > 1:
        _hand_to_workers(settings)
    return settings


def _hand_to_workers(settings) -> None:
    """Workers are fresh processes: give them the resolved settings as a file and nothing else."""
    from pydantic import SecretStr

    from andon.service.settings import CONFIG_ENV
    from andon.service.storage import make_dirs_durably, write_durably

    run_dir = settings.data_dir / "run"
    make_dirs_durably(run_dir)
    path = run_dir / "settings.json"
    data = settings.model_dump(mode="json")
    data["data_dir"] = str(Path(settings.data_dir).resolve())
    import json

    secrets = {n: v for n, v in settings if isinstance(v, SecretStr)}  # never on disk: the workers' environment
    for name in secrets:
        data.pop(name, None)
    write_durably(path, json.dumps(data, indent=2).encode())
    for name in [n for n in os.environ if n.startswith("ANDON_")]:
        del os.environ[name]  # the file already has the environment's values, below the CLI's
    for name, value in secrets.items():
        os.environ[f"ANDON_{name.upper()}"] = value.get_secret_value()
    os.environ[CONFIG_ENV] = str(path)


def _log_config(level: str) -> dict:
    """uvicorn's logging, plus the service's own logger (model swaps, storage failures) on the same handler."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["andon"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    # python-multipart logs a warning for every malformed upload, before the service answers it with its own
    # 400 (the same text): a sender of garbage would write one log line per request. Its errors still show.
    config["loggers"]["python_multipart"] = {"handlers": ["default"], "level": "ERROR", "propagate": False}
    return config


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise ConfigError(f"host {host!r} is not an IP address; give e.g. 0.0.0.0 or 127.0.0.1") from None


def _banner(settings) -> None:
    from andon.service.domain import open_service

    with open_service(settings) as service:
        state = service.registry.state()
    shown = "localhost" if _is_loopback(settings.host) else settings.host
    typer.echo(
        f"andon service on http://{shown}:{settings.port} (docs at /docs) | active model: "
        f"{state.active or 'none'} | data: {settings.data_dir} | {settings.workers} worker(s) x "
        f"{settings.inference_threads} inference threads x {settings.intra_op_threads} onnxruntime threads"
    )
