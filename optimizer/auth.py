"""Users of the operations API: per-user bearer tokens and three roles.

Roles are ordered: ``viewer`` reads (intersections, overrides, the audit log), ``operator``
also creates and cancels overrides, ``admin`` also verifies the audit chain. Users live in the
centre's SQLite file; a token is shown once, when the user is added or the token rotated, and
only its SHA-256 is stored. A fast hash is enough because tokens are 256 random bits, not
passwords: there is nothing to guess, so nothing for a slow hash to slow down.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass

from edge_agent.errors import TscError
from edge_agent.model import require_ident
from optimizer.sqlite_db import SqliteStore

__all__ = ["AuthError", "Role", "User", "UserExists", "UserStore", "hash_token",
           "TOKEN_PREFIX"]

TOKEN_PREFIX = "tsc_"  # makes a leaked token recognisable to secret scanners and people

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created    REAL NOT NULL
);
"""


class AuthError(TscError):
    """The user store could not be opened, read or written, or the user is unknown."""


class UserExists(AuthError):
    """A user of that name exists already."""


class Role(str, enum.Enum):
    """What a user may do; each role may do everything the ones before it may."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """0 for viewer, 1 for operator, 2 for admin."""
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        """True when this role may do what ``needed`` may."""
        return self.rank >= needed.rank

    @classmethod
    def parse(cls, value: str) -> Role:
        """The role named ``value``; ValueError listing the roles otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"role: must be one of {', '.join(r.value for r in cls)}, "
                             f"got {value!r}") from None


@dataclass(frozen=True, slots=True)
class User:
    """An API user."""

    name: str
    role: Role
    created: float


def hash_token(token: str) -> str:
    """The stored form of a token (hex SHA-256)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class UserStore(SqliteStore):
    """Users and their token hashes in an SQLite file (``":memory:"`` for tests)."""

    what = "user store"
    error = AuthError
    schema = _SCHEMA

    def add(self, name: str, role: Role | str, now: float) -> str:
        """Add a user and return their token (the only time it is shown)."""
        require_ident(name, "user.name")
        role = role if isinstance(role, Role) else Role.parse(role)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            self._execute("INSERT INTO users (name, role, token_hash, created) "
                          "VALUES (?, ?, ?, ?)", (name, role.value, hash_token(token), now))
        except sqlite3.IntegrityError:
            raise UserExists(f"user {name!r} exists already (rotate their token or remove "
                             f"them first)") from None
        return token

    def rotate(self, name: str) -> str:
        """Give a user a new token (the old one stops working) and return it."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        if self._execute("UPDATE users SET token_hash = ? WHERE name = ?",
                         (hash_token(token), name)) == 0:
            raise AuthError(f"no user {name!r}")
        return token

    def remove(self, name: str) -> None:
        """Remove a user; their token stops working at once."""
        if self._execute("DELETE FROM users WHERE name = ?", (name,)) == 0:
            raise AuthError(f"no user {name!r}")

    def users(self) -> list[User]:
        """Every user, by name."""
        rows = self._fetch("SELECT name, role, created FROM users ORDER BY name", ())
        return [User(name, Role(role), created) for name, role, created in rows]

    def authenticate(self, token: str) -> User | None:
        """The user holding ``token``, or None for an unknown token."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
            return None
        digest = hash_token(token)
        rows = self._fetch("SELECT name, role, created, token_hash FROM users "
                           "WHERE token_hash = ?", (digest,))
        # The lookup is by hash already; compare_digest keeps the final check constant-time.
        for name, role, created, stored in rows:
            if hmac.compare_digest(stored, digest):
                return User(name, Role(role), created)
        return None

    def _execute(self, sql: str, args: tuple) -> int:
        with self._lock:
            try:
                return self._db.execute(sql, args).rowcount
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise AuthError(f"user store {self.path}: cannot write: {exc}") from exc

    def _fetch(self, sql: str, args: tuple) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise AuthError(f"user store {self.path}: cannot read: {exc}") from exc
