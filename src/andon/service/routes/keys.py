"""/v1/keys: create, list and revoke API keys (engineer keys only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from andon.service.auth import create_key, list_keys, revoke_key
from andon.service.deps import CanManage, ContextDep, SessionDep
from andon.service.schemas import KeyCreate, KeyCreated, KeyOut

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def key_out(row) -> KeyOut:
    return KeyOut(
        id=row.id,
        name=row.name,
        role=row.role,
        camera_id=row.camera_id,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


@router.post("", status_code=201, response_model=KeyCreated, summary="Create a key (the secret is shown once)")
def create(body: KeyCreate, session: SessionDep, ctx: ContextDep, _: CanManage) -> Any:
    row, secret = create_key(session, role=body.role, camera_id=body.camera_id, name=body.name)
    session.commit()
    ctx.keys.invalidate()
    return KeyCreated(**key_out(row).model_dump(), key=secret)


@router.get("", response_model=list[KeyOut])
def list_(session: SessionDep, _: CanManage, include_revoked: bool = False) -> Any:
    return [key_out(r) for r in list_keys(session, include_revoked=include_revoked)]


@router.delete("/{key_id}", response_model=KeyOut, summary="Revoke a key (takes effect at once)")
def revoke(key_id: str, session: SessionDep, ctx: ContextDep, _: CanManage) -> Any:
    row = revoke_key(session, key_id)
    session.commit()
    ctx.keys.invalidate()
    return key_out(row)
