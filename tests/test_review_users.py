"""``andon users``: create (password from stdin), list, disable, enable, passwd; scrypt hashes."""

from __future__ import annotations

from typer.testing import CliRunner

from andon.cli import app as cli
from andon.errors import AndonError
from andon.service.review.accounts import hash_password, verify_password


def test_password_hashes_are_salted_scrypt_and_checked_in_constant_time():
    a, b = hash_password("s3cret-pass"), hash_password("s3cret-pass")
    assert a != b and a.startswith("scrypt$16384$8$1$")
    assert verify_password("s3cret-pass", a) and not verify_password("s3cret-pasS", a)
    assert not verify_password("x", "md5$abc") and not verify_password("x", "garbage")


def test_users_cli(tmp_path):
    run = CliRunner().invoke
    d = ["--data-dir", str(tmp_path)]
    r = run(cli, ["users", "create", "olga", "--role", "operator", "--password-stdin", *d], input="correct horse\n")
    assert r.exit_code == 0, r.output
    # user errors are AndonErrors (andon.cli.main prints them as one line and exits 2)
    again = run(cli, ["users", "create", "olga", "--password-stdin", *d], input="another pass\n")
    assert isinstance(again.exception, AndonError) and "already exists" in str(again.exception)
    bad = run(cli, ["users", "create", "cam", "--role", "camera", "--password-stdin", *d], input="whatever12\n")
    assert isinstance(bad.exception, AndonError) and "operator, engineer" in str(bad.exception)
    short = run(cli, ["users", "create", "bob", "--password-stdin", *d], input="short\n")
    assert isinstance(short.exception, AndonError) and "at least 8" in str(short.exception)
    listing = run(cli, ["users", "list", *d])
    assert "olga" in listing.output and "operator" in listing.output and "correct" not in listing.output
    assert run(cli, ["users", "disable", "olga", *d]).exit_code == 0
    assert run(cli, ["users", "enable", "olga", *d]).exit_code == 0
    assert run(cli, ["users", "passwd", "olga", "--password-stdin", *d], input="new password 1\n").exit_code == 0
    assert isinstance(run(cli, ["users", "disable", "nobody", *d]).exception, AndonError)

    from andon.service.db import make_engine, session_factory
    from andon.service.review.accounts import authenticate

    engine = make_engine(f"sqlite:///{tmp_path / 'andon.db'}")
    with session_factory(engine)() as s:
        assert authenticate(s, "olga", "new password 1") is not None
        assert authenticate(s, "olga", "correct horse") is None
    engine.dispose()
