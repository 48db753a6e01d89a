"""Fold stored events into aggregates without the library's per-event machinery.

A rebuild folds millions of events. The library's way, per event: build the
domain event object (its payload as a dict), then `mutate`: check the id and
version, pick the event's fields the @event method names
(filter_kwargs_for_method_params), bind the method, call it, and set the
version and modification time through property setters. Here, once per
event class, the same steps are resolved into one function: it decodes the
stored payload straight into the event's msgspec mirror (no dict, no event
object) and calls the decorated method with the fields it names, with the
same checks, in the same order.

Only event classes whose behaviour is exactly the library's defaults are
folded this way, checked once per class: `mutate` and `apply` not
overridden, a plain function behind @event, no upcasting (class_version 1),
an aggregate class that keeps the library's id/version/time attributes.
Anything else (and any payload that does not decode) is folded by the
library: decoded into its domain event and mutated, as the live projection
does. tests/unit/test_fast_fold.py checks both give the same aggregate for
every event type of every aggregate.
"""

from __future__ import annotations

import inspect
import operator
import types
from collections.abc import Callable
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import (
    BaseAggregate,
    CanInitAggregate,
    CanMutateAggregate,
    DecoratedFuncCaller,
    OriginatorIDError,
    OriginatorVersionError,
    _init_mentions_id,
    decorated_funcs,
)
from eventsourcing.utils import resolve_topic

from cloud_engine.engine.mapper import MsgspecMapper, codec_for

# (aggregate or None, aggregate id, version, stored payload) -> the aggregate
Folder = Callable[[Any, UUID, int, bytes], Any]

# An aggregate class and the call of its __init__ with a Created payload.
_Init = tuple[type[Any], Callable[[Any, Any], None]]

_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)
_ID_FIELDS = ("originator_id", "originator_version")


def _plain_aggregate(cls: type[Any]) -> bool:
    """The library's id, version and time attributes, its base init, and
    no __new__ of its own."""
    return (
        isinstance(cls, type)
        and issubclass(cls, BaseAggregate)
        and cls not in _init_mentions_id
        and cls.__new__ is object.__new__
        and getattr(cls, "__base_init__", None) is BaseAggregate.__base_init__
        and inspect.getattr_static(cls, "version") is BaseAggregate.__dict__["version"]
        and inspect.getattr_static(cls, "modified_on") is BaseAggregate.__dict__["modified_on"]
        and inspect.getattr_static(cls, "id") is BaseAggregate.__dict__["id"]
    )


def _inherited_apply(cls: type[Any]) -> Any:
    """The apply DecoratedFuncCaller.apply's super() call reaches."""
    mro = cls.__mro__
    for base in mro[mro.index(DecoratedFuncCaller) + 1 :]:
        if "apply" in base.__dict__:
            return base.__dict__["apply"]
    return None  # pragma: no cover: CanMutateAggregate defines it


def _caller(func: Callable[..., Any], fields: tuple[str, ...]) -> Callable[[Any, Any], None] | None:
    """Calls func(aggregate, ...) with the payload fields its signature
    names, as filter_kwargs_for_method_params picks them; None if it names
    a field that is not in the payload (the library would pass the id or
    version there)."""
    params = list(inspect.signature(func).parameters.values())[1:]  # after self
    names = [p.name for p in params if p.name in fields or p.name in _ID_FIELDS]
    if any(name in _ID_FIELDS for name in names):
        return None
    if not names:
        return lambda aggregate, payload: func(aggregate)
    # Positionally where that is the same call (the picked names are the
    # leading positional parameters), else by keyword.
    positional = [
        p.name
        for p in params[: len(names)]
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(names) == 1:
        name = names[0]
        if positional == names:
            return lambda aggregate, payload: func(aggregate, getattr(payload, name))
        return lambda aggregate, payload: func(aggregate, **{name: getattr(payload, name)})
    get = operator.attrgetter(*names)
    if positional == names:
        return lambda aggregate, payload: func(aggregate, *get(payload))
    keys = tuple(names)
    return lambda aggregate, payload: func(aggregate, **dict(zip(keys, get(payload), strict=True)))


class FastFold:
    """Folds (aggregate, id, version, topic, state) rows; one instance per
    fold (it caches a Folder per topic)."""

    def __init__(self, mapper: MsgspecMapper | None = None) -> None:
        self.mapper = mapper or MsgspecMapper()
        self.folders: dict[str, Folder] = {}
        self.fast: dict[str, bool] = {}  # per topic: folded without the library

    def __call__(
        self, aggregate: Any, originator_id: UUID, version: int, topic: str, state: bytes
    ) -> Any:
        folder = self.folders.get(topic)
        if folder is None:
            folder = self.folder(topic)
        return folder(aggregate, originator_id, version, state)

    def folder(self, topic: str) -> Folder:
        found = self.folders.get(topic)
        if found is None:
            built = self._build(topic)
            self.fast[topic] = built is not None
            found = self.folders[topic] = built or self._library(topic)
        return found

    def _library(self, topic: str) -> Folder:
        decode: Callable[..., Any] = self.mapper.decode

        def fold(aggregate: Any, originator_id: UUID, version: int, state: bytes) -> Any:
            return decode(originator_id, version, topic, state).mutate(aggregate)

        return fold

    def _build(self, topic: str) -> Folder | None:
        cls = resolve_topic(topic)
        if not (isinstance(cls, type) and issubclass(cls, CanMutateAggregate)):
            return None
        codec = codec_for(cls)
        if codec.class_version != 1 or "timestamp" not in codec.fields:
            return None
        if issubclass(cls, CanInitAggregate):
            return self._created(cls, topic, codec.decoder.decode)
        if cls.mutate is not CanMutateAggregate.mutate:
            return None
        if cls.apply is CanMutateAggregate.apply:
            call: Callable[[Any, Any], None] | None = None
        elif (
            cls.apply is DecoratedFuncCaller.apply
            and _inherited_apply(cls) is CanMutateAggregate.__dict__["apply"]
            and isinstance(decorated_funcs.get(cls), types.FunctionType)
        ):
            call = _caller(decorated_funcs[cls], codec.fields)
            if call is None:
                return None
        else:
            return None
        return self._mutation(topic, codec.decoder.decode, call)

    def _mutation(
        self,
        topic: str,
        decode: Callable[[bytes], Any],
        call: Callable[[Any, Any], None] | None,
    ) -> Folder:
        library = self._library(topic)
        plain: dict[type[Any], bool] = {}

        def fold(aggregate: Any, originator_id: UUID, version: int, state: bytes) -> Any:
            kind = type(aggregate)
            usual = plain.get(kind)
            if usual is None:
                usual = plain[kind] = _plain_aggregate(kind)
            if not usual:
                return library(aggregate, originator_id, version, state)
            try:
                payload = decode(state)
            except _DECODE_ERRORS:
                return library(aggregate, originator_id, version, state)  # raises its error
            # CanMutateAggregate.mutate's checks and steps, in its order.
            if originator_id != aggregate._id:
                raise OriginatorIDError(originator_id, aggregate._id)
            if version != aggregate._version + 1:
                raise OriginatorVersionError(version, aggregate._version + 1)
            if call is not None:
                call(aggregate, payload)
            aggregate._version = version
            aggregate._modified_on = payload.timestamp
            return aggregate

        return fold

    def _created(self, cls: type[Any], topic: str, decode: Callable[[bytes], Any]) -> Folder | None:
        if cls.mutate is not CanInitAggregate.mutate or cls.apply is not CanMutateAggregate.apply:
            return None
        fields = codec_for(cls).fields
        if "originator_topic" not in fields:
            return None
        library = self._library(topic)
        callers: dict[str, _Init | None] = {}

        def fold(aggregate: Any, originator_id: UUID, version: int, state: bytes) -> Any:
            if aggregate is not None:
                return library(aggregate, originator_id, version, state)  # the library's assert
            try:
                payload = decode(state)
            except _DECODE_ERRORS:
                return library(aggregate, originator_id, version, state)
            topic_of_class = payload.originator_topic
            if topic_of_class in callers:
                made = callers[topic_of_class]
            else:
                made = callers[topic_of_class] = self._init(topic_of_class, fields)
            if made is None:
                return library(aggregate, originator_id, version, state)
            kind, init = made
            # CanInitAggregate.mutate's steps.
            created: Any = object.__new__(kind)
            created.__base_init__(originator_id, version, payload.timestamp)
            init(created, payload)
            return created

        return fold

    def _init(self, originator_topic: str, fields: tuple[str, ...]) -> _Init | None:
        try:
            kind = resolve_topic(originator_topic)
        except Exception:
            return None  # the library raises its own error for it
        if not _plain_aggregate(kind):
            return None
        init = kind.__init__
        if not isinstance(init, types.FunctionType):
            return None
        call = _caller(init, fields)
        return None if call is None else (kind, call)
