"""API keys: each key belongs to one owner; only a hash of the secret is stored."""

import hashlib
import secrets
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import ApiKey, Owner
from app.core.db import begin_write, new_id, utcnow
from app.core.errors import NotFound, Unauthorized

KEY_PREFIX = "ft_"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _add_key(*, session: Session, owner: Owner, secret: str, name: str) -> ApiKey:
    key = ApiKey(id=new_id("key"), owner_id=owner.id, secret_hash=hash_secret(secret), name=name)
    session.add(key)
    return key


def ensure_admin(*, session: Session, configured_key: str | None) -> str | None:
    """Create the admin owner on first start; return a generated key to print once, else None."""
    begin_write(session)
    admin = session.scalars(select(Owner).where(Owner.is_admin.is_(True))).first()
    generated = None
    if admin is None:
        admin = Owner(id=new_id("own"), name="admin", is_admin=True)
        session.add(admin)
        session.flush()
        if not configured_key:
            generated = generate_secret()
            _add_key(session=session, owner=admin, secret=generated, name="admin (generated)")
    if configured_key:
        existing = session.scalars(
            select(ApiKey).where(ApiKey.secret_hash == hash_secret(configured_key))
        ).first()
        if existing is None:
            _add_key(
                session=session, owner=admin, secret=configured_key, name="admin (FINETUNE_API_KEY)"
            )
        elif existing.revoked_at is not None or existing.owner_id != admin.id:
            raise RuntimeError("FINETUNE_API_KEY names a revoked key or another owner's key")
    session.commit()
    return generated


def authenticate(*, session: Session, secret: str | None) -> Owner:
    """The owner of a live key; one 401 for missing, unknown and revoked keys alike."""
    if secret:
        key = session.scalars(
            select(ApiKey).where(ApiKey.secret_hash == hash_secret(secret))
        ).first()
        if key is not None and key.revoked_at is None:
            owner = session.get(Owner, key.owner_id)
            if owner is not None:
                return owner
    raise Unauthorized("missing or invalid API key; send 'Authorization: Bearer <key>'")


class KeyCache:
    """Owners of keys that authenticated in the last `ttl` seconds, so most requests
    authenticate without reading the database. Only successes are kept. A key revoked
    through this process is forgotten at once (`clear`); one revoked elsewhere (the CLI,
    another API process) stops working within `ttl` seconds. `ttl` 0 turns it off."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._items: dict[str, tuple[float, Owner]] = {}

    def get(self, secret: str) -> Owner | None:
        hit = self._items.get(hash_secret(secret)) if self.ttl > 0 else None
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, secret: str, owner: Owner) -> None:
        if self.ttl <= 0:
            return
        if len(self._items) >= self.MAX_ENTRIES:
            self._items.clear()
        self._items[hash_secret(secret)] = (time.monotonic() + self.ttl, owner)

    def clear(self) -> None:
        self._items.clear()


def create_owner_key(*, session: Session, name: str) -> tuple[Owner, ApiKey, str]:
    """A new owner with its first key; the secret is returned once and never stored."""
    begin_write(session)
    owner = Owner(id=new_id("own"), name=name, is_admin=False)
    session.add(owner)
    session.flush()
    secret = generate_secret()
    key = _add_key(session=session, owner=owner, secret=secret, name=name)
    session.commit()
    return owner, key, secret


def list_keys(*, session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(*, session: Session, key_id: str) -> ApiKey:
    begin_write(session)
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"API key {key_id!r} not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.commit()
    return key
