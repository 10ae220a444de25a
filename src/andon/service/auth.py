"""API keys, roles and what each role may do.

Four roles with separate credentials:

* ``camera``   posts frames, only for the camera id its key is bound to; reads nothing.
* ``monitor``  reads ``/metrics`` and ``/readyz`` only: the key a plant's Prometheus scrapes with
               (``authorization: {credentials_file: ...}`` in its scrape config), which reads no inspection.
* ``operator`` reads inspections, images, parts, and reviews (and the health routes).
* ``engineer`` everything an operator may do, plus models, keys and retention (and posting, for tests).

A key looks like ``andon_<id>_<secret>``. The id finds the row; the secret is checked against
HMAC-SHA256(per-key random salt, secret) in constant time. Secrets are 256 random bits, so a fast hash is
the right one (a slow KDF protects guessable passwords, not random keys). Only the hash is stored; the key is
shown once, at creation.

With no key in the database the service is in *open mode*: requests need no credential, except that
management (models, keys, retention) is never open; ``andon serve`` then binds to loopback only. Once a key
exists, every API route needs one, for good: revoked keys stay in the table as rows, so "a key row was ever
written" survives restarts, and revoking every key closes the service rather than opening it. Only the
setting ``allow_open_mode_after_keys`` (logged as a warning at every start) lets a database whose keys are
all revoked fall back to open mode.

Every request with a key is checked against the database (one primary-key read), so a revocation, by the API
or by ``andon keys revoke`` from another process, takes effect at the next request: nothing is cached.

``/livez`` is always open. ``/metrics`` and ``/readyz`` are open when ``health_is_public(settings)``: the
setting ``public_health``, or by default when the service is bound to loopback only; otherwise they need a
monitor, operator or engineer credential.

Authentication is a list of authenticators on ``app.state.authenticators`` (request, session) -> Principal
or None; the API-key one is first. A cookie-session authenticator (the review station) can be appended.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from andon.errors import ConfigError, NotFoundError
from andon.service.tables import ApiKey, utcnow

Role = Literal["camera", "monitor", "operator", "engineer"]
ROLES: tuple[Role, ...] = ("camera", "monitor", "operator", "engineer")
Permission = Literal["inspect", "monitor", "read", "review", "manage"]

#: who may do what (anonymous principals in open mode: everything but manage)
PERMISSIONS: dict[Permission, frozenset[str]] = {
    "inspect": frozenset({"camera", "engineer"}),
    "monitor": frozenset({"monitor", "operator", "engineer"}),
    "read": frozenset({"operator", "engineer"}),
    "review": frozenset({"operator", "engineer"}),
    "manage": frozenset({"engineer"}),
}

_PREFIX = "andon_"
_LAST_USED_EVERY_S = 60.0
log = logging.getLogger("andon.service")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key holder, or anonymous (only possible in open mode)."""

    role: str | None
    camera_id: str | None = None
    key_id: str | None = None
    name: str = "anonymous"

    @property
    def anonymous(self) -> bool:
        return self.role is None

    def may(self, permission: Permission) -> bool:
        if self.anonymous:
            return permission != "manage"
        return self.role in PERMISSIONS[permission]


ANONYMOUS = Principal(role=None)
Authenticator = Callable[..., Principal | None]


def hash_secret(salt: str, secret: str) -> str:
    return hmac.new(salt.encode(), secret.encode(), hashlib.sha256).hexdigest()


def create_key(
    session: Session, *, role: str, camera_id: str | None = None, name: str | None = None
) -> tuple[ApiKey, str]:
    """A new key (committed by the caller). Returns (row, plaintext key)."""
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if role == "camera" and not camera_id:
        raise ConfigError("a camera key must be bound to a camera id (--camera-id)")
    if role != "camera" and camera_id:
        raise ConfigError(f"only camera keys are bound to a camera id, not {role} keys")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    row = ApiKey(
        id=key_id,
        name=name or (f"{role}:{camera_id}" if camera_id else role),
        role=role,
        camera_id=camera_id,
        salt=salt,
        secret_hash=hash_secret(salt, secret),
        created_at=utcnow(),
    )
    session.add(row)
    return row, f"{_PREFIX}{key_id}_{secret}"


def list_keys(session: Session, *, include_revoked: bool = False) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))


def any_key_ever(session: Session) -> bool:
    """Whether a key was ever created here: revoked keys keep their rows, and nothing deletes them."""
    return bool(session.scalar(select(exists().where(ApiKey.id.is_not(None)))))


def any_active_key(session: Session) -> bool:
    return bool(session.scalar(select(exists().where(ApiKey.revoked_at.is_(None)))))


def open_mode(session: Session, *, allow_after_keys: bool = False) -> bool:
    """No credential needed: no key was ever created (or, with ``allow_after_keys``, none is active)."""
    return not (any_active_key(session) if allow_after_keys else any_key_ever(session))


def revoke_key(session: Session, key_id: str) -> ApiKey:
    row = session.get(ApiKey, key_id) if len(key_id) <= 64 else None
    if row is None:
        shown = key_id if len(key_id) <= 40 else key_id[:40] + "…"
        raise NotFoundError(f"no API key with id {shown!r}; 'andon keys list' shows the ids")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def verify_key(session: Session, presented: str) -> ApiKey | None:
    """The active key row for a presented key string, or None."""
    if not presented.startswith(_PREFIX):
        return None
    key_id, _, secret = presented[len(_PREFIX) :].partition("_")
    if not key_id or not secret or len(presented) > 200:
        return None
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        hmac.compare_digest("0" * 64, hash_secret("x", secret))  # same work whether or not the id exists
        return None
    if not hmac.compare_digest(row.secret_hash, hash_secret(row.salt, secret)):
        return None
    return row


def presented_key(headers: dict[str, str] | object) -> str | None:
    """The key in ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    get = headers.get  # type: ignore[attr-defined]
    auth = get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    value = get("x-api-key")
    return value.strip() if value else None


class KeyDirectory:
    """Facts about keys the hot path needs: is a credential required, which camera ids keys name.

    ``auth_required`` reads the database until it is true, then latches (a key row, once written, is never
    deleted), so the first key created, by the API or the CLI, closes open mode at the next request. With
    ``allow_open_mode_after_keys`` it never latches: it is then "some key is active", read every time.
    ``camera_ids`` (which cameras are known) is refreshed at most every ``ttl`` seconds.
    """

    def __init__(
        self, session_factory: Callable[[], Session], ttl: float = 2.0, *, allow_open_after_keys: bool = False
    ) -> None:
        self._factory = session_factory
        self._ttl = ttl
        self._allow_open = allow_open_after_keys
        self._lock = threading.Lock()
        self._at = -1e9
        self._cameras: frozenset[str] = frozenset()
        self._latched = False
        self._warned = False

    @property
    def cameras_stale(self) -> bool:
        """Whether the next ``camera_ids`` reads the database (an async caller refreshes off the event loop
        first, with ``refresh_cameras`` in a worker thread)."""
        return time.monotonic() - self._at >= self._ttl

    def refresh_cameras(self) -> None:
        """Read the key table's camera ids if the cached ones are older than ``ttl`` (a database read)."""
        now = time.monotonic()
        if now - self._at < self._ttl:
            return
        with self._lock:
            if now - self._at < self._ttl:
                return
            with self._factory() as session:
                rows = list_keys(session)
            self._cameras = frozenset(r.camera_id for r in rows if r.camera_id)
            self._at = now

    def invalidate(self) -> None:
        """Forget the cached camera ids (after a key is created or revoked through the API)."""
        self._at = -1e9

    def check_start(self) -> None:
        """At start-up: say loudly when ``allow_open_mode_after_keys`` opens a database that had keys."""
        with self._factory() as session:
            ever, active = any_key_ever(session), any_active_key(session)
        if self._allow_open and ever and not active:
            log.warning(
                "OPEN MODE after keys: every API key is revoked and allow_open_mode_after_keys is set, so "
                "requests without a credential are served; create a key or unset the setting to close it"
            )
        elif self._allow_open:
            log.warning("allow_open_mode_after_keys is set: revoking every key will re-open the service")

    @property
    def auth_required(self) -> bool:
        if self._latched:
            return True
        with self._factory() as session:
            closed = not open_mode(session, allow_after_keys=self._allow_open)
        if closed and not self._allow_open:
            self._latched = True
        if not closed and self._allow_open and not self._warned:
            with self._factory() as session:
                had_keys = any_key_ever(session)
            if had_keys:
                log.warning("serving a request without a credential: every key is revoked (allow_open_mode_after_keys)")
                self._warned = True
        return closed

    @property
    def camera_ids(self) -> frozenset[str]:
        self.refresh_cameras()
        return self._cameras


def health_is_public(settings: object) -> bool:
    """Whether ``/metrics`` and ``/readyz`` answer without a credential: ``public_health`` when set, else
    only when the service is bound to loopback (``host``), where only this machine can reach them."""
    chosen = getattr(settings, "public_health", None)
    if chosen is not None:
        return bool(chosen)
    return is_loopback(str(getattr(settings, "host", "127.0.0.1")))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that is not localhost: assume it is reachable from elsewhere


def api_key_authenticator(request: object, session: Session) -> Principal | None:
    """Principal for the request's API key; None when it presents none. Raises on a bad key."""
    from andon.service.errors import AuthenticationError

    key = presented_key(request.headers)  # type: ignore[attr-defined]
    if key is None:
        return None
    row = verify_key(session, key)
    if row is None:
        raise AuthenticationError("API key not recognised (unknown, revoked or mistyped)")
    now = utcnow()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > _LAST_USED_EVERY_S:
        row.last_used_at = now  # at most one write per key per minute: enough to find unused keys
        session.commit()
    return Principal(role=row.role, camera_id=row.camera_id, key_id=row.id, name=row.name)
