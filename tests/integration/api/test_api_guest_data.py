"""A VM's user data and SSH keys over the API: taken when well-formed,
stored with the VM (its Created event) and shown to its owner and admins
only; invalid base64, more than 32 KiB or a malformed key is a 422 naming
the field."""

from __future__ import annotations

import base64
import struct

from api_harness import Api, make_fabric, vm_body


def ed25519_key(comment: str = "alice@laptop") -> str:
    """An OpenSSH public key line (a made-up key: only its form matters)."""
    kind = b"ssh-ed25519"
    blob = struct.pack(">I", len(kind)) + kind + struct.pack(">I", 32) + bytes(range(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


SCRIPT = base64.b64encode(b"#!/bin/sh\nhostname from-user-data\n").decode()


async def test_user_data_and_keys_are_kept_for_the_owner_and_refused_when_malformed(
    api: Api,
) -> None:
    fabric = await make_fabric(api)
    key = ed25519_key()
    body = vm_body(fabric, "web", user_data=SCRIPT, ssh_keys=[key])
    deployed = await api.post("/v1/vms", body, token=api.alice)
    assert deployed.status == 202, deployed.body
    vm_id = deployed.json()["resource_id"]
    for token in (api.alice, api.admin):
        shown = await api.get(f"/v1/vms/{vm_id}", token=token)
        assert shown.status == 200, shown.body
        attributes = shown.json()["attributes"]
        assert (attributes["user_data"], attributes["ssh_keys"]) == (SCRIPT, [key])
    # Another account does not see the VM at all, nor its events.
    assert (await api.get(f"/v1/vms/{vm_id}", token=api.bob)).status == 404
    assert (await api.get(f"/v1/vms/{vm_id}/events", token=api.bob)).status == 404

    too_big = base64.b64encode(b"#" * (32 * 1024 + 1)).decode()
    rsa_named_ed25519 = ed25519_key().replace("ssh-ed25519", "ssh-rsa", 1)
    for extra, field in [
        ({"user_data": "not base64!"}, "user_data"),
        ({"user_data": "YWJj="}, "user_data"),  # bad padding
        ({"user_data": too_big}, "user_data"),
        ({"ssh_keys": ["ssh-ed25519"]}, "ssh_keys"),
        ({"ssh_keys": ["ssh-ed25519 AAAA%%%"]}, "ssh_keys"),
        ({"ssh_keys": [rsa_named_ed25519]}, "ssh_keys"),
        ({"ssh_keys": [key + "\nssh-ed25519 AAAA"]}, "ssh_keys"),
        ({"ssh_keys": ["x"] * 17}, "ssh_keys"),
    ]:
        refused = await api.post("/v1/vms", vm_body(fabric, "bad", **extra), token=api.alice)
        assert refused.status == 422, (extra, refused.body)
        assert refused.json()["field"] == field, (extra, refused.body)
