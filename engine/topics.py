"""Stored topics that do not depend on where the package is installed.

The eventsourcing library names a class by its module path (a "topic") in
every stored event (`topic` column) and inside every aggregate's Created
event (`originator_topic`), and resolves that text back to the class on
every read. The layers are installed under one import package
(cloud_engine.engine, cloud_engine.bus, ...), but the log keeps the names it
was written with before that ("engine.fabric.zone:Zone.Created"): a topic is
part of the log, and the log is never rewritten. So every aggregate and
event class is given its topic without the package prefix, both ways:
writing (the library's topic cache, which get_topic consults first) and
reading (register_topic); and engine/'s old top-level name resolves to the
installed package, for classes not listed here (older event versions).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from eventsourcing import utils

PACKAGE = "cloud_engine"
# Only engine/ defines what is stored (aggregates, events, the recorder).
LAYER = "engine"


def stable_topic(cls: type) -> str:
    """The class's topic as stored: its module path without the package."""
    return utils.construct_topic(cls).removeprefix(PACKAGE + ".")


def register(classes: Iterable[type]) -> None:
    for cls in classes:
        topic = stable_topic(cls)
        utils.register_topic(topic, cls)
        # get_topic() answers from this cache before constructing a topic
        # (private to the library, which is pinned below 9.6: see store.py).
        utils._type_cache[cls] = topic


def register_layer() -> None:
    """'engine.x:Y' resolves as 'cloud_engine.engine.x:Y' (resolve_topic
    tries each prefix of a topic's module path against registered topics)."""
    utils.register_topic(LAYER, importlib.import_module(f"{PACKAGE}.{LAYER}"))
