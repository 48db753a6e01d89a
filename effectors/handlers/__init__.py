"""The effector side of every work kind: HANDLERS, by kind name.

The kinds themselves are declared in bus/work.py (KINDS); each has exactly
one handler here, checked on import, so an effector that would meet a kind
it cannot handle (or handle one nobody asks for) does not start.
"""

from __future__ import annotations

from typing import Any

from cloud_engine.bus.work import KINDS
from cloud_engine.effectors.handlers import (
    network,
    template,
    vm,
    vm_migrate,
    volume,
    volume_move,
)
from cloud_engine.effectors.handlers.base import Handler

_FAMILIES: tuple[dict[str, Handler[Any]], ...] = (
    vm.HANDLERS,
    vm_migrate.HANDLERS,
    volume.HANDLERS,
    volume_move.HANDLERS,
    template.HANDLERS,
    network.HANDLERS,
)

HANDLERS: dict[str, Handler[Any]] = {k: h for f in _FAMILIES for k, h in f.items()}


def _check() -> None:
    missing = sorted(KINDS.keys() - HANDLERS.keys())
    unknown = sorted(HANDLERS.keys() - KINDS.keys())
    twice = sum(len(f) for f in _FAMILIES) != len(HANDLERS)
    if missing or unknown or twice:
        raise RuntimeError(
            f"work kinds without a handler: {missing}; handlers of no kind: {unknown};"
            f" a kind handled twice: {twice}"
        )


_check()
