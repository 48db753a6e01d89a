"""Random command sequences on a Volume, checked against a reference model.

The model below has its own transition table and rules; it must not import
VOLUME_TRANSITIONS, otherwise a mistake in the table would be checked against
itself.
"""

from uuid import uuid4

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.virtual.volume import Volume
from tests.unit.support import assert_payload_round_trips, check_step, draw_action, replayed

GIB = 1 << 30
POOL = uuid4()
VMS = [uuid4(), uuid4()]
SNAPSHOTS = [uuid4(), uuid4()]
reasons = st.sampled_from(["boom", "", " "])

MODEL_STATES = {"Allocated", "Creating", "Ready", "Attached", "Resizing", "Destroyed", "Error"}
MODEL_SOURCES = {
    "create_requested": {"Allocated"},
    "created": {"Creating"},
    "attach": {"Ready"},
    "detach": {"Attached", "Error"},
    "resize_requested": {"Ready", "Attached"},
    "resized": {"Resizing"},
    "revert_requested": {"Ready", "Attached"},
    "reverted": {"Ready", "Attached"},
    "destroy": {"Allocated", "Ready", "Error"},
    "fail": {"Creating", "Resizing", "Ready", "Attached"},
}
DESTRUCTIVE = {"destroy", "fail"}


class VolumeModel:
    def __init__(self, kind, size):
        self.kind = kind
        self.state = "Allocated"
        self.size = size
        self.vm = None
        self.device = None
        self.resize_to = None
        self.resume = None
        self.reverting = None

    def refusal(self, action, arg):
        """The error the command must raise, or None when it must succeed."""
        if self.state not in MODEL_SOURCES[action]:
            return InvalidTransition
        if self.reverting is not None and action not in ("reverted", "fail"):
            return InvalidTransition
        if action == "attach":
            _, device = arg
            if (self.kind == "root") != (device == 0) or device < 0:
                return Validation
        if action == "detach":
            if self.vm is None:
                return InvalidTransition
            if self.kind == "root" and not arg:
                return Validation
        if action == "resize_requested" and arg <= self.size:
            return Validation
        if action == "reverted" and self.reverting is None:
            return InvalidTransition
        if action == "destroy" and self.vm is not None:
            return InvalidTransition
        if action == "fail":
            if self.state in ("Ready", "Attached") and self.reverting is None:
                return InvalidTransition
            if not arg.strip():
                return Validation
        return None

    def apply(self, action, arg):
        if action == "create_requested":
            self.state = "Creating"
        elif action == "created":
            self.state = "Ready"
        elif action == "attach":
            self.state = "Attached"
            self.vm, self.device = arg
        elif action == "detach":
            if self.state == "Attached":
                self.state = "Ready"
            self.vm = self.device = None
        elif action == "resize_requested":
            self.resume, self.state, self.resize_to = self.state, "Resizing", arg
        elif action == "resized":
            self.state, self.size = self.resume, self.resize_to
            self.resume = self.resize_to = None
        elif action == "revert_requested":
            self.reverting = arg
        elif action == "reverted":
            self.reverting = None
        elif action == "destroy":
            self.state = "Destroyed"
        elif action == "fail":
            self.state = "Error"
            self.resume = self.resize_to = self.reverting = None

    def observed(self):
        return (self.state, self.size, self.vm, self.device, self.resize_to, self.resume)


class VolumeMachine(RuleBasedStateMachine):
    @initialize(kind=st.sampled_from(["root", "data"]), size_gib=st.integers(1, 4))
    def create(self, kind, size_gib):
        self.volume = Volume.create("acme", "vol", uuid4(), size_gib * GIB, kind)
        self.model = VolumeModel(kind, size_gib * GIB)
        self.events = list(self.volume.collect_events())

    def argument(self, action, valid):
        """A strategy for the action's argument; valid ones mostly get accepted."""
        if action == "create_requested":
            return st.just(POOL)
        if action == "attach":
            root = self.model.kind == "root"
            devices = (
                st.just(0) if valid and root else st.integers(1, 3) if valid else st.integers(0, 3)
            )
            return st.tuples(st.sampled_from(VMS), devices)
        if action == "detach":
            return st.just(True) if valid else st.booleans()
        if action == "resize_requested":
            low = self.model.size + GIB if valid else GIB
            return st.integers(low // GIB, low // GIB + 3).map(lambda g: g * GIB)
        if action == "revert_requested":
            return st.sampled_from(SNAPSHOTS)
        if action == "fail":
            return st.just("boom") if valid else reasons
        return st.none()

    def call(self, action, arg):
        method = getattr(self.volume, action)
        if action == "attach":
            method(*arg)
        elif action == "detach":
            method(vm_expunging=arg)
        elif arg is None:
            method()
        else:
            method(arg)

    @rule(data=st.data())
    def step(self, data):
        # Destroyed accepts nothing.
        valid, action = draw_action(data, self.model.state, MODEL_SOURCES, DESTRUCTIVE)
        arg = data.draw(self.argument(action, valid), label="arg")

        expected = self.model.refusal(action, arg)
        check_step(self.volume, expected, lambda: self.call(action, arg), self.events)
        if expected is None:
            self.model.apply(action, arg)
        v = self.volume
        assert (v.state, v.size_bytes, v.vm_id, v.device_id, v.resize_to, v.resume_state) == (
            self.model.observed()
        )
        assert v.reverting_to == self.model.reverting

    @invariant()
    def state_is_declared(self):
        assert self.volume.state in MODEL_STATES

    @invariant()
    def version_counts_events(self):
        assert self.volume.version == len(self.events)

    @invariant()
    def attachment_is_consistent(self):
        v = self.volume
        assert (v.vm_id is None) == (v.device_id is None)
        if v.state == "Attached" or v.resume_state == "Attached":
            assert v.vm_id is not None
        if v.state in ("Allocated", "Creating", "Ready", "Destroyed"):
            assert v.vm_id is None

    @invariant()
    def replay_reproduces_the_aggregate(self):
        assert vars(replayed(self.events)) == vars(self.volume)

    def teardown(self):
        for e in getattr(self, "events", ()):
            assert_payload_round_trips(e)


VolumeMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_volume_state_machine = VolumeMachine.TestCase
