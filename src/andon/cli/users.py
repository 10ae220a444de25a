"""``andon users create/list/disable/enable/passwd``: people who log in to the review pages.

Operators review flagged parts; engineers also see the line dashboard. Cameras never get a user: they use
API keys ('andon keys'), which the pages refuse. Passwords are prompted for (twice, hidden), or read from
stdin with ``--password-stdin`` for scripts; they never appear on the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from andon.cli._service import ConfigOpt, DataDirOpt, DbOpt, service_session

users_app = typer.Typer(help="Operators and engineers who log in to the review station.", no_args_is_help=True)

StdinOpt = typer.Option(False, "--password-stdin", help="Read the password from the first line of stdin.")


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@users_app.command("create")
def create(
    username: str = typer.Argument(..., help="Login name (letters, digits, . _ @ -)."),
    role: str = typer.Option("operator", "--role", help="operator or engineer."),
    password_stdin: bool = StdinOpt,
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    database_url: str | None = DbOpt,
) -> None:
    """Create a user who can log in to the review page."""
    from andon.service.review.accounts import check_password_rules, create_user

    password = _password(password_stdin)
    check_password_rules(password)
    with service_session(config, data_dir, database_url) as session:
        user = create_user(session, username, role, password)
        session.commit()
    typer.secho(f"user {user.username} ({user.role}) created", fg=typer.colors.GREEN, err=True)


@users_app.command("list")
def list_(
    config: Path | None = ConfigOpt, data_dir: Path | None = DataDirOpt, database_url: str | None = DbOpt
) -> None:
    """List users (never passwords)."""
    from rich.console import Console
    from rich.table import Table

    from andon.service.review.accounts import list_users

    with service_session(config, data_dir, database_url) as session:
        rows = list_users(session)
    table = Table("user", "role", "created", "last login", "disabled")
    for u in rows:
        table.add_row(
            u.username,
            u.role,
            f"{u.created_at:%Y-%m-%d %H:%M}",
            f"{u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else "",
            f"{u.disabled_at:%Y-%m-%d %H:%M}" if u.disabled_at else "",
        )
    Console().print(table)


@users_app.command("disable")
def disable(
    username: str = typer.Argument(..., help="The user to lock out."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    database_url: str | None = DbOpt,
) -> None:
    """Disable a user and end their sessions (their verdicts stay in the audit trail)."""
    from andon.service.review.accounts import disable_user

    with service_session(config, data_dir, database_url) as session:
        user = disable_user(session, username)
        session.commit()
    typer.echo(f"disabled {user.username}")


@users_app.command("enable")
def enable(
    username: str = typer.Argument(...),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    database_url: str | None = DbOpt,
) -> None:
    """Allow a disabled user to log in again."""
    from andon.service.review.accounts import enable_user

    with service_session(config, data_dir, database_url) as session:
        user = enable_user(session, username)
        session.commit()
    typer.echo(f"enabled {user.username}")


@users_app.command("passwd")
def passwd(
    username: str = typer.Argument(...),
    password_stdin: bool = StdinOpt,
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    database_url: str | None = DbOpt,
) -> None:
    """Set a new password (ends the user's sessions)."""
    from andon.service.review.accounts import set_password

    password = _password(password_stdin)
    with service_session(config, data_dir, database_url) as session:
        set_password(session, username, password)
        session.commit()
    typer.echo(f"password of {username} changed")
