"""Users of the review pages: create, list, disable, change passwords, check a login.

Passwords are hashed with scrypt (N=2^14, r=8, p=1: 16 MiB and tens of milliseconds per guess, the
parameters the Python docs and OWASP suggest for interactive logins) and a random 16-byte salt per user.
The stored form, ``scrypt$N$r$p$salt$hash`` (base64), names its own parameters, so they can be raised
later without locking anyone out. A login for an unknown or disabled user costs the same scrypt as a real
one, so response times do not reveal which usernames exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from andon.errors import ConfigError, NotFoundError
from andon.service.review.tables import USER_ROLES, User
from andon.service.tables import utcnow

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD_LENGTH = 8
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=128 * 1024 * 1024, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a ``hash_password`` string; False for malformed ones."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=128 * 1024 * 1024,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


#: hashed once, lazily: what a login for an unknown user is checked against (same cost, always False)
_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(hash_password(secrets.token_urlsafe(16)))
    return _DUMMY[0]


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(f"the password has {len(password)} characters; use at least {MIN_PASSWORD_LENGTH}")
    if len(password) > 1024:
        raise ConfigError("the password is longer than 1024 characters")


def create_user(session: Session, username: str, role: str, password: str) -> User:
    """A new user (committed by the caller)."""
    if not _USERNAME.match(username or ""):
        raise ConfigError(
            f"username {username!r} is not allowed: 1 to 64 letters, digits and . _ @ -, "
            "starting with a letter or digit"
        )
    if role not in USER_ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(USER_ROLES)} (cameras use API keys)")
    check_password_rules(password)
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise ConfigError(f"user {username!r} already exists; 'andon users passwd {username}' changes the password")
    user = User(username=username, role=role, password_hash=hash_password(password), created_at=utcnow())
    session.add(user)
    return user


def get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFoundError(f"no user {username!r}; 'andon users list' shows the users")
    return user


def list_users(session: Session, *, include_disabled: bool = True) -> list[User]:
    query = select(User).order_by(User.username)
    if not include_disabled:
        query = query.where(User.disabled_at.is_(None))
    return list(session.scalars(query))


def disable_user(session: Session, username: str) -> User:
    """Disable the user and end their sessions at once (their next request is logged out)."""
    from andon.service.review.sessions import end_user_sessions

    user = get_user(session, username)
    if user.disabled_at is None:
        user.disabled_at = utcnow()
    end_user_sessions(session, user.id)
    return user


def enable_user(session: Session, username: str) -> User:
    user = get_user(session, username)
    user.disabled_at = None
    return user


def set_password(session: Session, username: str, password: str) -> User:
    """A new password; existing sessions end (a password change is often a reaction to a leak)."""
    from andon.service.review.sessions import end_user_sessions

    check_password_rules(password)
    user = get_user(session, username)
    user.password_hash = hash_password(password)
    end_user_sessions(session, user.id)
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with these credentials, else None (same scrypt cost either way)."""
    user = session.scalar(select(User).where(User.username == username)) if _USERNAME.match(username or "") else None
    ok = verify_password(password, user.password_hash if user is not None else _dummy_hash())
    if user is None or not ok or user.disabled_at is not None:
        return None
    return user
