"""Constrained field types of the public contract.

msgspec checks them while decoding, so a value out of range is refused with
the path of the field before anything else runs; the OpenAPI document shows
the same limits because it is generated from these types.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from cloud_engine.api.auth import ACCOUNT_PATTERN
from cloud_engine.engine.virtual.nic import MAX_DEVICE_ID

# PostgreSQL text and jsonb cannot hold U+0000: a string with one would be
# recorded in the log and then stop every projection that reads its event.
NO_NUL = r"^[^\x00]*$"
# Python's `$` also matches before a final newline; `(?!\n)` makes it the
# true end, as it is in JSON Schema, so "10.0.0.1\n" is refused. [0-9], not
# \d: in Python \d is any Unicode digit.
END = r"$(?!\n)"

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=NO_NUL)]
Description = Annotated[str, msgspec.Meta(max_length=2000, pattern=NO_NUL)]
Account = Annotated[
    str,
    msgspec.Meta(
        pattern=ACCOUNT_PATTERN,
        description="The owning account. Users may leave it out (their token's account is"
        " used); admins may name any account.",
    ),
]
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048, pattern=NO_NUL)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_NUL)]
Tags = Annotated[tuple[Tag, ...], msgspec.Meta(max_length=32)]
# What Python's ipaddress takes, so the document states it: octets 0-255
# without leading zeros, a prefix length 0-32 (one leading zero allowed, as
# ipaddress reads "08" as 8). Whether a CIDR has host bits set, or a
# gateway lies inside it, is the engine's check (422 with a rule).
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_QUAD = rf"{_OCTET}(\.{_OCTET}){{3}}"
Address = Annotated[str, msgspec.Meta(pattern=f"^{_QUAD}{END}", description="an IPv4 address")]
Cidr = Annotated[
    str,
    msgspec.Meta(pattern=f"^{_QUAD}/(3[0-2]|[0-2]?[0-9]){END}", description="an IPv4 CIDR block"),
]
Mac = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}" + END)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Overcommit = Annotated[float, msgspec.Meta(ge=1.0, le=64.0)]
Bytes = Annotated[int, msgspec.Meta(ge=1, le=1 << 60)]
DiskGb = Annotated[int, msgspec.Meta(ge=1, le=65536)]
Cpus = Annotated[int, msgspec.Meta(ge=1, le=1024)]
HostCores = Annotated[int, msgspec.Meta(ge=1, le=65536)]
RamMb = Annotated[int, msgspec.Meta(ge=64, le=1 << 32)]
HostRamMb = Annotated[int, msgspec.Meta(ge=1, le=1 << 40)]
Mhz = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
NetworkTag = Annotated[int, msgspec.Meta(ge=1, le=2**24 - 1)]
DeviceId = Annotated[int, msgspec.Meta(ge=0, le=MAX_DEVICE_ID)]
