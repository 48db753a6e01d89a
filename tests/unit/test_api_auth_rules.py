"""The ACL rules as plain functions: roles, accounts, bearer headers."""

from __future__ import annotations

import uuid

import pytest

from cloud_engine.api.auth import (
    Principal,
    account_for,
    admin_only_field,
    bearer_token,
    can_see,
    require_access,
    valid_account,
)
from cloud_engine.api.problems import ApiError
from cloud_engine.api.tokens import PREFIX, digest, new_secret

ADMIN = Principal(token_id=uuid.uuid4(), role="admin", account="ops")
ALICE = Principal(token_id=uuid.uuid4(), role="user", account="alice")


def _status(call: object, *args: object, **kwargs: object) -> int | None:
    try:
        call(*args, **kwargs)  # type: ignore[operator]
    except ApiError as error:
        return error.status
    return None


@pytest.mark.parametrize(
    ("principal", "access", "write", "status"),
    [
        (ADMIN, "fabric", True, None),
        (ADMIN, "fabric", False, None),
        (ADMIN, "catalog", True, None),
        (ADMIN, "tenant", True, None),
        (ALICE, "fabric", True, 403),
        (ALICE, "fabric", False, 403),
        (ALICE, "catalog", True, 403),
        (ALICE, "catalog", False, None),
        (ALICE, "tenant", True, None),
        (ALICE, "tenant", False, None),
    ],
)
def test_require_access(principal: Principal, access: str, write: bool, status: int | None) -> None:
    assert _status(require_access, principal, access, write=write) == status


def test_visibility() -> None:
    assert can_see(ADMIN, "tenant", "bob")
    assert can_see(ADMIN, "tenant", None)
    assert can_see(ALICE, "tenant", "alice")
    assert not can_see(ALICE, "tenant", "bob")
    # A tenant resource whose owner is unknown is nobody's but the admins'.
    assert not can_see(ALICE, "tenant", None)
    assert can_see(ALICE, "catalog", None)


def test_account_for() -> None:
    assert account_for(ALICE, None) == "alice"
    assert account_for(ALICE, "alice") == "alice"
    assert _status(account_for, ALICE, "bob") == 403
    assert account_for(ADMIN, None) == "ops"
    assert account_for(ADMIN, "bob") == "bob"


def test_admin_only_fields() -> None:
    assert _status(admin_only_field, ALICE, "host_id", None) is None
    assert _status(admin_only_field, ALICE, "host_id", uuid.uuid4()) == 403
    assert _status(admin_only_field, ADMIN, "host_id", uuid.uuid4()) is None


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER abc", "abc")],
)
def test_bearer_token(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc", "abc"])
def test_bearer_token_refused(header: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        bearer_token(header)
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"] == "Bearer"


def test_actor_scopes_idempotency_per_token() -> None:
    other = Principal(token_id=uuid.uuid4(), role="user", account="alice")
    assert ALICE.actor != other.actor
    assert ALICE.actor.startswith("api:alice:")


def test_secrets_are_random_and_only_hashed() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith(PREFIX) and len(a) > 40
    assert digest(a) != digest(b) and len(digest(a)) == 32
    assert a.encode() not in digest(a)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("alice", True), ("team-1.prod_x", True), ("", False), ("-x", False), ("a b", False),
     ("x" * 64, True), ("x" * 65, False), ("ümlaut", False)],
)  # fmt: skip
def test_account_names(name: str, ok: bool) -> None:
    assert valid_account(name) is ok


def test_account_names_have_no_trailing_newline() -> None:
    assert valid_account("alice")
    assert not valid_account("alice\n")
