"""Who is asking and what they may do: the minimal ACL.

Two roles. An admin manages the fabric and sees every account's resources;
a user sees and changes only its own account's. The rules are plain
functions of the principal, so they are tested without HTTP or a database.

Refusals are chosen so a user learns nothing about other accounts: another
account's resource answers 404 exactly like one that does not exist, while
a fabric endpoint (whose existence is public in the OpenAPI document)
answers 403.
"""

from __future__ import annotations

import re
from typing import Literal
from uuid import UUID

import msgspec

from cloud_engine.api.problems import forbidden, not_found, unauthorized

Role = Literal["admin", "user"]
# What an endpoint touches: the fabric (admin only), the catalog (zones and
# templates: everyone reads, admin writes) or tenant resources (per account).
Access = Literal["fabric", "catalog", "tenant"]

# `(?!\n)`: Python's `$` also matches before a final newline, so without it
# "alice\n" would pass (JSON Schema's `$` is the true end either way).
ACCOUNT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$(?!\n)"
_ACCOUNT = re.compile(ACCOUNT_PATTERN)


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    token_id: UUID
    role: Role
    account: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def actor(self) -> str:
        # Recorded on every event the request causes; also the scope of its
        # idempotency keys, so two tokens never replay each other's answers.
        return f"api:{self.account}:{self.token_id}"


def valid_account(name: str) -> bool:
    return _ACCOUNT.match(name) is not None


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; 401 otherwise."""
    if not authorization:
        raise unauthorized("this endpoint needs an Authorization: Bearer <token> header")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("the Authorization header must be `Bearer <token>`")
    return token


def require_access(principal: Principal, access: Access, *, write: bool) -> None:
    """403 for a user on the fabric, or writing the catalog."""
    if principal.is_admin or access == "tenant":
        return
    if access == "catalog" and not write:
        return
    raise forbidden("this endpoint is for administrators")


def can_see(principal: Principal, access: Access, account: str | None) -> bool:
    """Whether a resource owned by `account` exists for this principal.
    Fabric and catalog resources are settled by require_access; a tenant
    resource with no known account is for admins only."""
    if principal.is_admin or access != "tenant":
        return True
    return account is not None and account == principal.account


def require_visible(principal: Principal, access: Access, account: str | None, what: str) -> None:
    if not can_see(principal, access, account):
        raise not_found(f"{what} not found")


def account_for(principal: Principal, requested: str | None) -> str:
    """The account a new tenant resource belongs to: a user's own (naming
    another is refused), whichever an admin names (its own by default)."""
    if requested is None:
        return principal.account
    if principal.is_admin or requested == principal.account:
        return requested
    raise forbidden(
        f"a user token of account {principal.account!r} cannot act for another account",
        field="account",
    )


def admin_only_field(principal: Principal, field: str, value: object) -> None:
    """Fields that steer the fabric (a host to deploy on) are for admins."""
    if value is not None and not principal.is_admin:
        raise forbidden(f"only administrators may set {field}", field=field)
