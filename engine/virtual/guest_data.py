"""What a VM's guest is given at first boot: user data and SSH keys
(cloud-init's NoCloud seed, made by the effector).

user_data is base64 (as in CloudStack's and EC2's APIs: any bytes, a
script or #cloud-config), at most 32 KiB once decoded. An SSH key is one
OpenSSH public key line: a type, its base64 blob (which names the same
type) and an optional comment.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

from cloud_engine.engine.aggregate import require

USER_DATA_MAX = 32 * 1024
# Its base64 text: 4 characters per 3 bytes, padded.
USER_DATA_TEXT_MAX = (USER_DATA_MAX + 2) // 3 * 4
MAX_KEYS = 16
KEY_TEXT_MAX = 16 * 1024
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_KEY = re.compile(r"^(\S+) ([A-Za-z0-9+/]+={0,2})(?: ([^\r\n\x00]*))?$")


def decode_user_data(text: str) -> bytes:
    """The user data's bytes; Validation (field user_data) unless text is
    base64 of at most 32 KiB."""
    require(len(text) <= USER_DATA_TEXT_MAX, "user_data must be at most 32 KiB", field="user_data")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        data = None
    # Canonical only (padded, no line breaks): the decoder lets stray "=" by.
    require(
        data is not None and base64.b64encode(data).decode() == text,
        "user_data must be base64 (RFC 4648, padded, on one line)",
        field="user_data",
    )
    assert data is not None
    require(len(data) <= USER_DATA_MAX, "user_data must be at most 32 KiB", field="user_data")
    return data


def require_ssh_keys(keys: tuple[str, ...]) -> None:
    require(len(keys) <= MAX_KEYS, f"ssh_keys: at most {MAX_KEYS} keys", field="ssh_keys")
    for index, key in enumerate(keys):
        require(key_type(key) is not None, f"ssh_keys[{index}] is not an OpenSSH public key",
                field="ssh_keys")  # fmt: skip


def key_type(key: str) -> str | None:
    """The key's type if key is one well-formed OpenSSH public key line."""
    if len(key) > KEY_TEXT_MAX:
        return None
    match = _KEY.match(key)
    if match is None or match.group(1) not in KEY_TYPES:
        return None
    try:
        blob = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        return None
    # The blob starts with the type again, as an SSH string (length, bytes).
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    return match.group(1) if blob[4 : 4 + length] == match.group(1).encode() else None
