"""API keys, roles and what each role may do.

Three roles with separate credentials:

* ``camera``   posts frames, only for the camera id its key is bound to; reads nothing.
* ``operator`` reads inspections, images, parts, and reviews.
* ``engineer`` everything an operator may do, plus models, keys and retention (and posting, for tests).

A key looks like ``andon_<id>_<secret>``. The id finds the row; the secret is checked against
HMAC-SHA256(per-key random salt, secret) in constant time. Secrets are 256 random bits, so a fast hash is
the right one (a slow KDF protects guessable passwords, not random keys). Only the hash is stored; the key is
shown once, at creation.

With no key in the database the service is in *open mode*: requests need no credential, except that
management (models, keys, retention) is never open; ``andon serve`` then binds to loopback only. Once a key
exists, every API route needs one.

Authentication is a list of authenticators on ``app.state.authenticators`` (request, session) -> Principal
or None; the API-key one is first. A cookie-session authenticator (the review station) can be appended.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from andon.errors import ConfigError, NotFoundError
from andon.service.tables import ApiKey, utcnow

Role = Literal["camera", "operator", "engineer"]
ROLES: tuple[Role, ...] = ("camera", "operator", "engineer")
Permission = Literal["inspect", "read", "review", "manage"]

#: who may do what (anonymous principals in open mode: everything but manage)
PERMISSIONS: dict[Permission, frozenset[str]] = {
    "inspect": frozenset({"camera", "engineer"}),
    "read": frozenset({"operator", "engineer"}),
    "review": frozenset({"operator", "engineer"}),
    "manage": frozenset({"engineer"}),
}

_PREFIX = "andon_"
_LAST_USED_EVERY_S = 60.0


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


def revoke_key(session: Session, key_id: str) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFoundError(f"no API key with id {key_id!r}; 'andon keys list' shows the ids")
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
    """Cached facts about keys the hot path needs: do any exist, which camera ids they name.

    Refreshed at most every ``ttl`` seconds, so a key created with the CLI while the service runs takes
    effect within that time. ``auth_required`` latches: a service that started (or saw) keys never reverts
    to open mode because the last key was revoked.
    """

    def __init__(self, session_factory: Callable[[], Session], ttl: float = 2.0) -> None:
        self._factory = session_factory
        self._ttl = ttl
        self._lock = threading.Lock()
        self._at = -1e9
        self._any = False
        self._cameras: frozenset[str] = frozenset()
        self._latched = False
        self._verified: dict[bytes, tuple[Principal, float]] = {}

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._at < self._ttl:
            return
        with self._lock:
            if now - self._at < self._ttl:
                return
            with self._factory() as session:
                rows = list_keys(session)
            self._any = bool(rows)
            self._cameras = frozenset(r.camera_id for r in rows if r.camera_id)
            self._latched = self._latched or self._any
            self._at = now

    def invalidate(self) -> None:
        """Forget everything cached (after a key is created or revoked through the API)."""
        self._at = -1e9
        self._verified.clear()

    def cached_principal(self, key: str) -> Principal | None:
        """The principal of a key verified less than ``ttl`` seconds ago (revocation by the CLI therefore
        takes effect within ``ttl`` seconds; through the API at once)."""
        hit = self._verified.get(hashlib.sha256(key.encode()).digest())
        if hit is None or time.monotonic() - hit[1] > self._ttl:
            return None
        return hit[0]

    def remember(self, key: str, principal: Principal) -> None:
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[hashlib.sha256(key.encode()).digest()] = (principal, time.monotonic())

    @property
    def auth_required(self) -> bool:
        self._refresh()
        return self._latched

    @property
    def camera_ids(self) -> frozenset[str]:
        self._refresh()
        return self._cameras


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
