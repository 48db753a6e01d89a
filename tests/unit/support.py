"""Helpers shared by the unit tests.

Imported as ``from tests.unit.support import ...``: pytest puts the project root
on sys.path (``pythonpath = ["."]`` in pyproject.toml), where ``tests`` is a
namespace package.

- refusals: assert_refused (an aggregate method), assert_command_refused (a handler)
- events: event_names, replayed, assert_payload_round_trips
- transition tables: transition_cases, allowed_cases, allowed_moves, refused_cases,
  run_steps, drive, assert_transition, assert_disable_then_enable
- model-based state machines: draw_action, check_step
- aggregates: make_host
"""

import copy
import functools
import itertools
import typing
from uuid import uuid4

import msgspec
import pytest
from hypothesis import strategies as st

from cloud_engine.engine.commands.base import dispatch
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.fast_fold import FastFold
from cloud_engine.engine.mapper import MsgspecMapper

# Refusals ----------------------------------------------------------------------------


def assert_refused(aggregate, error, action):
    """The command raises error, records nothing and leaves the state as it was.

    Returns the error, for checks of its field, state or action.
    """
    aggregate.collect_events()
    before = copy.deepcopy(vars(aggregate))
    with pytest.raises(error) as info:
        action()
    assert aggregate.collect_events() == []
    assert vars(aggregate) == before
    return info.value


def assert_command_refused(uow, error, command):
    """The handler raises error, adds no aggregate and leaves nothing to commit.

    Returns the error, for checks of its field.
    """
    uow.commit()
    known = set(uow.aggregates)
    with pytest.raises(error) as info:
        dispatch(uow, command)
    assert set(uow.aggregates) == known
    assert uow.commit() == []
    return info.value


# Events ------------------------------------------------------------------------------


def event_names(aggregate):
    """Collect the aggregate's pending events and return their class names."""
    return [type(e).__name__ for e in aggregate.collect_events()]


def replayed(events, mapper=None):
    """Rebuild an aggregate from its events; through mapper's stored form if given.

    The rebuild's fast fold (engine.fast_fold) must agree with it on every
    history replayed here: checked on the way."""
    events = list(events)
    aggregate = None
    for event in events:
        domain_event = event
        if mapper is not None:
            domain_event = mapper.to_domain_event(mapper.to_stored_event(event))
        aggregate = domain_event.mutate(aggregate)
    fold_both_ways(events)
    return aggregate


def fold_both_ways(events):
    """Fold the events' stored form per aggregate with the library and with
    the fast fold; assert both give the same aggregates and return them."""
    mapper = MsgspecMapper()
    fast = FastFold(mapper)
    histories = {}
    for event in events:
        histories.setdefault(event.originator_id, []).append(mapper.to_stored_event(event))
    folded = []
    for stored in histories.values():
        slow = quick = None
        for s in stored:
            slow = mapper.to_domain_event(s).mutate(slow)
            quick = fast(quick, s.originator_id, s.originator_version, s.topic, s.state)
        assert type(quick) is type(slow)
        assert vars(quick) == vars(slow)
        folded.append(quick)
    return folded


@functools.cache
def payload_type(event_class):
    """A msgspec Struct with the event's declared attributes and their types."""
    hints = typing.get_type_hints(event_class)
    fields = [(n, t) for n, t in hints.items() if n not in ("originator_id", "originator_id_type")]
    return msgspec.defstruct(f"{event_class.__name__}Payload", fields)


def assert_payload_round_trips(event):
    """Every event attribute must survive msgspec JSON with its declared type."""
    kind = payload_type(type(event))
    data = {name: getattr(event, name) for name in kind.__struct_fields__}
    decoded = msgspec.json.decode(msgspec.json.encode(data), type=kind)
    assert msgspec.structs.asdict(decoded) == data


# Transition tables -------------------------------------------------------------------


def transition_cases(reach, transitions):
    """Split every (state, action) pair into the allowed and the refused ones.

    reach maps each state to the steps that lead there; transitions maps each
    action to (source states, target state, event name).
    """
    pairs = list(itertools.product(reach, transitions))
    allowed = [(s, a) for s, a in pairs if s in transitions[a][0]]
    refused = [(s, a) for s, a in pairs if s not in transitions[a][0]]
    return allowed, refused


def allowed_cases(allowed):
    """(action, source) pairs from a map of action -> source states, sources sorted."""
    return [(a, s) for a, sources in allowed.items() for s in sorted(sources)]


def allowed_moves(allowed):
    """(action, source, target) from a map of action -> {source: target}, sources sorted."""
    return [(a, s, t) for a, moves in allowed.items() for s, t in sorted(moves.items())]


def refused_cases(allowed, states):
    """(action, state) for every state the action is not allowed in."""
    return [(a, s) for a in allowed for s in states if s not in allowed[a]]


def run_steps(aggregate, steps):
    """Call the aggregate's methods named by steps, in order, without arguments."""
    for step in steps:
        getattr(aggregate, step)()


def drive(aggregate, paths, state):
    """Take aggregate to state along paths.

    Each step of paths[state] is either the name of another state, reached first
    the same way, or a callable applied to the aggregate.
    """
    for step in paths[state]:
        if isinstance(step, str):
            drive(aggregate, paths, step)
        else:
            step(aggregate)


def assert_transition(aggregate, action, transitions):
    """The action moves the aggregate to its target state with one event."""
    getattr(aggregate, action)()
    _, target, event_name = transitions[action]
    assert aggregate.state == target
    assert event_names(aggregate) == [event_name]


def assert_disable_then_enable(aggregate):
    """A new, enabled aggregate can be disabled and enabled again."""
    aggregate.disable()
    assert aggregate.state == "Disabled"
    aggregate.enable()
    assert aggregate.state == "Enabled"
    assert event_names(aggregate) == ["Created", "Disabled", "Enabled"]


def check_step(aggregate, expected, call, events):
    """One step of a model-based state machine.

    With expected None the call must succeed with exactly one event, which is
    appended to events; otherwise it must be refused with expected (see
    assert_refused).
    """
    if expected is None:
        call()
        new = aggregate.collect_events()
        assert len(new) == 1
        events.extend(new)
    else:
        assert_refused(aggregate, expected, call)


def draw_action(data, state, sources, destructive):
    """Draw (valid, action) for one step of a model-based state machine.

    Mostly an action the model accepts in state, or the walk rarely gets past
    the first refusals; destructive ones weigh less so walks reach deep states.
    The rest, and every draw in a state that accepts nothing, pick any action,
    to probe refusals in every state reached. sources maps each action to the
    model states it is accepted in.
    """
    valid = data.draw(st.sampled_from([True, True, True, False]), label="valid")
    actions = [
        a
        for a, accepted_in in sorted(sources.items())
        if state in accepted_in
        for _ in range(1 if a in destructive else 3)
    ]
    if not (valid and actions):
        valid, actions = False, sorted(sources)
    return valid, data.draw(st.sampled_from(actions), label="action")


# Aggregates --------------------------------------------------------------------------


def make_host(**overrides):
    """A Host just created in a zone, pod and cluster of fresh ids: 4 cores,
    1000 MB, unless overrides say otherwise (any of Host.create's arguments)."""
    values = {
        "zone_id": uuid4(),
        "pod_id": uuid4(),
        "cluster_id": uuid4(),
        "name": "kvm-01",
        "cpu_cores": 4,
        "ram_mb": 1000,
        "libvirt_uri": "qemu+ssh://kvm-01/system",
    }
    values.update(overrides)
    return Host.create(**values)
