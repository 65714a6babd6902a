"""API users: roles, tokens shown once and stored hashed."""

from __future__ import annotations

import sqlite3

import pytest

from optimizer.auth import TOKEN_PREFIX, AuthError, Role, UserExists, UserStore, hash_token


def test_roles_are_ordered():
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR) and not Role.OPERATOR.allows(Role.ADMIN)
    assert Role.parse("admin") is Role.ADMIN
    with pytest.raises(ValueError, match="role: must be one of viewer, operator, admin"):
        Role.parse("root")


def test_tokens_authenticate_their_user_and_only_their_hash_is_stored(tmp_path):
    path = tmp_path / "central.sqlite"
    store = UserStore(path)
    token = store.add("alice", "operator", 100.0)
    assert token.startswith(TOKEN_PREFIX) and len(token) > 40
    user = store.authenticate(token)
    assert (user.name, user.role, user.created) == ("alice", Role.OPERATOR, 100.0)
    stored = sqlite3.connect(path).execute("SELECT token_hash FROM users").fetchall()
    assert stored == [(hash_token(token),)] and token not in str(stored)
    for wrong in ("", "tsc_wrong", token[len(TOKEN_PREFIX):], None):
        assert store.authenticate(wrong) is None


def test_rotate_and_remove_revoke_the_old_token():
    store = UserStore(":memory:")
    old = store.add("bob", Role.VIEWER, 0.0)
    new = store.rotate("bob")
    assert store.authenticate(old) is None and store.authenticate(new).name == "bob"
    store.add("carol", Role.ADMIN, 0.0)
    assert [u.name for u in store.users()] == ["bob", "carol"]
    store.remove("bob")
    assert store.authenticate(new) is None and [u.name for u in store.users()] == ["carol"]


def test_bad_names_duplicates_and_unknown_users_are_refused():
    store = UserStore(":memory:")
    store.add("alice", "viewer", 0.0)
    with pytest.raises(UserExists, match="'alice' exists already"):
        store.add("alice", "admin", 0.0)
    with pytest.raises(ValueError, match="user.name"):
        store.add("a b", "viewer", 0.0)
    with pytest.raises(ValueError, match="role"):
        store.add("dave", "superuser", 0.0)
    with pytest.raises(AuthError, match="no user 'zed'"):
        store.rotate("zed")
    with pytest.raises(AuthError, match="no user 'zed'"):
        store.remove("zed")


def test_an_unusable_store_raises_auth_errors(tmp_path):
    with pytest.raises(AuthError, match="cannot open"):
        UserStore(tmp_path / "no-dir" / "users.sqlite")
    store = UserStore(":memory:")
    store.close()
    with pytest.raises(AuthError, match="cannot read"):
        store.users()
    with pytest.raises(AuthError, match="cannot write"):
        store.remove("x")
