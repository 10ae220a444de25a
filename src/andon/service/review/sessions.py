"""Login sessions for the pages: server-side rows, an HttpOnly SameSite=Strict cookie, CSRF per session.

The cookie carries 256 random bits; the database keeps only their SHA-256, so reading the database does not
give anyone a session. Every state-changing request made with the cookie must also carry the session's CSRF
token (form field ``csrf_token`` or header ``X-CSRF-Token``); with SameSite=Strict that is two independent
defences. API keys are never accepted by the pages, and the cookie is accepted by the API only as a
``UserPrincipal`` with the user's role (never camera).

Failed logins are throttled per username and per client address (``LoginThrottle``), on top of the cost
of scrypt itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from andon.service.auth import Principal
from andon.service.review.tables import User, WebSession
from andon.service.tables import utcnow

COOKIE = "andon_session"
LOGIN_CSRF_COOKIE = "andon_login_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TOUCH_EVERY = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class UserPrincipal(Principal):
    """A logged-in person (operator or engineer), as the service's role model sees them."""

    user_id: int = 0
    csrf_token: str = ""
    session_hash: str = ""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


#: ended and expired session rows are kept this long (who was logged in when), then deleted at a login
SESSION_RECORDS_KEPT = dt.timedelta(days=90)


def start_session(session: Session, user: User, hours: float) -> str:
    """A new session row (committed by the caller); returns the cookie token."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at < now - SESSION_RECORDS_KEPT))
    session.add(
        WebSession(
            token_hash=token_hash(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + dt.timedelta(hours=hours),
            last_seen_at=now,
        )
    )
    user.last_login_at = now
    return token


def end_session(session: Session, token: str) -> None:
    row = session.get(WebSession, token_hash(token))
    if row is not None and row.ended_at is None:
        row.ended_at = utcnow()


def end_user_sessions(session: Session, user_id: int) -> None:
    session.execute(
        update(WebSession).where(WebSession.user_id == user_id, WebSession.ended_at.is_(None)).values(ended_at=utcnow())
    )


def principal_for(session: Session, token: str | None) -> UserPrincipal | None:
    """The logged-in user of a cookie token, or None when absent, unknown, ended, expired or disabled."""
    if not token or len(token) > 100:
        return None
    found = session.execute(
        select(WebSession, User)
        .join(User, User.id == WebSession.user_id)
        .where(WebSession.token_hash == token_hash(token))
    ).first()
    if found is None:
        return None
    row, user = found
    now = utcnow()
    if row.ended_at is not None or row.expires_at <= now or user.disabled_at is not None:
        return None
    if now - row.last_seen_at > _TOUCH_EVERY:  # one small write a minute, not one per request
        row.last_seen_at = now
        session.commit()
    return UserPrincipal(
        role=user.role, name=user.username, user_id=user.id, csrf_token=row.csrf_token, session_hash=row.token_hash
    )


def csrf_ok(expected: str, presented: str | None) -> bool:
    return bool(expected) and bool(presented) and hmac.compare_digest(expected, presented or "")


def cookie_secure(setting: str, scheme: str) -> bool:
    return setting == "always" or (setting == "auto" and scheme == "https")


def session_authenticator(request: object, session: Session) -> Principal | None:
    """For the API routes: the cookie's user; an unsafe method also needs the X-CSRF-Token header."""
    from andon.service.errors import PermissionDeniedError

    token = request.cookies.get(COOKIE)  # type: ignore[attr-defined]
    if not token:
        return None
    principal = principal_for(session, token)
    if principal is None:
        return None
    if request.method not in SAFE_METHODS and not csrf_ok(
        principal.csrf_token,  # type: ignore[attr-defined]
        request.headers.get(CSRF_HEADER),
    ):  # type: ignore[attr-defined]
        raise PermissionDeniedError(
            "missing or wrong CSRF token: a change made with a login session needs the "
            "session's token in the X-CSRF-Token header"
        )
    return principal


class LoginThrottle:
    """After ``limit`` failures within ``window`` seconds for a username or an address, refuse for ``lock``
    seconds. In memory, per process: enough to make online guessing impractical with scrypt's cost."""

    def __init__(self, limit: int = 5, window: float = 900.0, lock: float = 60.0) -> None:
        self.limit, self.window, self.lock = limit, window, lock
        self._failures: dict[str, list[float]] = {}
        self._mutex = threading.Lock()

    def wait_seconds(self, *keys: str) -> int:
        now = time.monotonic()
        with self._mutex:
            worst = 0.0
            for key in keys:
                recent = [t for t in self._failures.get(key, []) if now - t < self.window]
                self._failures[key] = recent
                if len(recent) >= self.limit:
                    worst = max(worst, recent[-1] + self.lock - now)
            return int(worst + 0.999) if worst > 0 else 0

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._mutex:
            for key in keys:
                self._failures.setdefault(key, []).append(now)
            if len(self._failures) > 10_000:  # bound memory under a spray of usernames
                self._failures = {k: v for k, v in self._failures.items() if v and now - v[-1] < self.window}

    def succeeded(self, *keys: str) -> None:
        with self._mutex:
            for key in keys:
                self._failures.pop(key, None)
