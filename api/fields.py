"""Constrained field types of the public contract.

msgspec checks them while decoding, so a value out of range is refused with
the path of the field before anything else runs; the OpenAPI document shows
the same limits because it is generated from these types.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from api.auth import ACCOUNT_PATTERN
from engine.virtual.nic import MAX_DEVICE_ID

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Description = Annotated[str, msgspec.Meta(max_length=2000)]
Account = Annotated[
    str,
    msgspec.Meta(
        pattern=ACCOUNT_PATTERN,
        description="The owning account. Users may leave it out (their token's account is"
        " used); admins may name any account.",
    ),
]
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Tags = Annotated[tuple[Tag, ...], msgspec.Meta(max_length=32)]
Address = Annotated[
    str, msgspec.Meta(pattern=r"^\d{1,3}(\.\d{1,3}){3}$", description="an IPv4 address")
]
Cidr = Annotated[
    str,
    msgspec.Meta(pattern=r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$", description="an IPv4 CIDR block"),
]
Mac = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")]
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
