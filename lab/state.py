"""The lab's record on disk (lab.json) and the lock that serialises changes."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from cloud_engine.lab.model import LabError, LabState


def load(path: Path) -> LabState:
    try:
        return msgspec.json.decode(path.read_bytes(), type=LabState)
    except FileNotFoundError:
        return LabState()
    except msgspec.DecodeError as e:
        raise LabError(f"{path} is not a lab state file ({e}); remove it to start over") from None


def save(path: Path, state: LabState) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state)))
    os.replace(tmp, path)


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """One change to a lab at a time, across processes."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
