"""API keys: generated once, shown once, stored as a SHA-256 hash (a random 256-bit key
needs no slow hash: it cannot be guessed from a dictionary)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from distillab.errors import DistillabError
from distillab.service.db import AuditEvent, User

KEY_PREFIX = "dk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def add_user(session: Session, name: str, admin: bool = False) -> str:
    """Create a user and return their API key (the only time it exists in clear)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise DistillabError("users add: NAME must be 1 to 200 characters")
    if session.scalars(select(User).where(User.name == name)).first() is not None:
        raise DistillabError(f"users add: a user named {name!r} already exists")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    user = User(name=name, key_hash=hash_key(key), is_admin=admin)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        raise DistillabError(f"users add: a user named {name!r} already exists") from None
    session.add(AuditEvent(user_id=user.id, action="user.create", target=name, detail={"admin": admin}))
    return key


def authenticate(session: Session, key: str | None) -> User | None:
    if not key:
        return None
    return user_by_key_hash(session, hash_key(key))


def user_by_key_hash(session: Session, digest: str) -> User | None:
    return session.scalars(select(User).where(User.key_hash == digest)).first()
