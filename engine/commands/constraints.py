"""Decode-time constraints shared by the fabric commands.

msgspec checks these while decoding a command, so malformed input is refused
before a handler runs; the aggregates check again because they can also be
driven without a decoded command.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Overcommit = Annotated[float, msgspec.Meta(ge=1.0)]
