"""Random command sequences on a VirtualMachine, checked against a reference model.

The model below has its own transition table and rules; it must not import
VM_TRANSITIONS, otherwise a mistake in the table would be checked against itself.
"""

from uuid import uuid4

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.virtual.vm import VirtualMachine, VmSpec
from tests.unit.support import assert_payload_round_trips, check_step, draw_action, replayed

HOSTS = [uuid4() for _ in range(3)]
POOL = uuid4()
hosts = st.sampled_from(HOSTS)
reasons = st.sampled_from(["boom", "link down", "", "  "])

MODEL_STATES = {
    "Allocated",
    "Starting",
    "Running",
    "Stopping",
    "Stopped",
    "Migrating",
    "Destroyed",
    "Expunging",
    "Expunged",
    "Error",
}
MODEL_SOURCES = {
    "place": {"Allocated"},
    "start_requested": {"Allocated", "Stopped"},
    "mark_running": {"Starting"},
    "stop_requested": {"Running"},
    "mark_stopped": {"Stopping"},
    "reboot": {"Running"},
    "migrate_requested": {"Running", "Stopped"},
    "migration_completed": {"Migrating"},
    "migration_failed": {"Migrating"},
    "destroy": {"Allocated", "Stopped", "Running", "Error"},
    "recover": {"Destroyed"},
    "expunge_requested": {"Destroyed"},
    "expunged": {"Expunging"},
    "expunge_failed": {"Expunging"},
    "fail": {"Allocated", "Starting", "Stopping", "Migrating"},
}
DESTRUCTIVE = {"destroy", "fail", "expunge_requested"}
HOLDS_HOST = {"Starting", "Running", "Stopping", "Migrating"}


class VmModel:
    def __init__(self):
        self.state = "Allocated"
        self.host = None
        self.last_host = None
        self.target = None
        self.offline = False  # a stopped VM's migration

    def current(self):
        """Where a migration starts from: a stopped VM's disks are on its last host."""
        return self.host if self.state == "Running" else self.last_host

    def refusal(self, action, arg):
        """The error the command must raise, or None when it must succeed."""
        if self.state not in MODEL_SOURCES[action]:
            return InvalidTransition
        if action == "place" and self.host is not None:
            return InvalidTransition
        if action == "start_requested" and self.state == "Allocated":
            if self.host is None:
                return InvalidTransition
            if arg != self.host:
                return Validation
        if action == "migrate_requested" and arg == self.current():
            return Validation
        if action in ("fail", "migration_failed", "expunge_failed") and not arg.strip():
            return Validation
        return None

    def release(self):
        if self.host is not None and not self.offline:
            self.last_host = self.host
        self.host = None
        self.target = None
        self.offline = False

    def apply(self, action, arg):
        if action == "place":
            self.host = arg
        elif action == "start_requested":
            self.state, self.host = "Starting", arg
        elif action in ("mark_running", "reboot"):
            self.state = "Running"
        elif action == "stop_requested":
            self.state = "Stopping"
        elif action == "mark_stopped":
            self.state = "Stopped"
            self.release()
        elif action == "migrate_requested":
            # A stopped VM holds its destination while its disks move.
            self.offline = self.state == "Stopped"
            if self.offline:
                self.host = arg
            self.state, self.target = "Migrating", arg
        elif action == "migration_completed":
            if self.offline:
                self.state, self.last_host, self.host = "Stopped", self.target, None
            else:
                self.state, self.last_host, self.host = "Running", self.host, self.target
            self.target, self.offline = None, False
        elif action == "migration_failed":
            if self.offline:
                self.state, self.host = "Stopped", None
            else:
                self.state = "Running"
            self.target, self.offline = None, False
        elif action == "destroy":
            self.state = "Destroyed"
            self.release()
        elif action == "recover":
            self.state = "Stopped"
        elif action == "expunge_requested":
            self.state = "Expunging"
        elif action == "expunged":
            self.state = "Expunged"
        elif action == "expunge_failed":
            self.state = "Destroyed"
        elif action == "fail":
            self.state = "Error"
            self.release()


class VmMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        spec = VmSpec(cpus=1, ram_mb=512, root_disk_gb=10, tags=("ssd",))
        self.vm = VirtualMachine.create("acme", "web", uuid4(), uuid4(), spec, (uuid4(),))
        self.model = VmModel()
        self.events = list(self.vm.collect_events())

    def run(self, action, arg, call):
        expected = self.model.refusal(action, arg)
        check_step(self.vm, expected, call, self.events)
        if expected is None:
            self.model.apply(action, arg)
        assert self.vm.state == self.model.state
        assert (self.vm.host_id, self.vm.last_host_id, self.vm.migration_target_id) == (
            self.model.host,
            self.model.last_host,
            self.model.target,
        )

    def argument(self, action, valid):
        """A strategy for the action's argument; valid ones mostly get accepted."""
        if action == "place":
            return hosts
        if action == "start_requested":
            placed = self.model.state == "Allocated" and self.model.host is not None
            return st.just(self.model.host) if valid and placed else hosts
        if action == "stop_requested":
            return st.booleans()
        if action == "migrate_requested":
            here = self.model.current()
            return hosts.filter(lambda h: h != here) if valid else hosts
        if action in ("fail", "migration_failed", "expunge_failed"):
            return st.sampled_from(["boom", "link down"]) if valid else reasons
        return st.none()

    @rule(data=st.data())
    def step(self, data):
        # Destructive moves weigh less so walks reach migrations and restarts;
        # Expunged accepts nothing.
        valid, action = draw_action(data, self.model.state, MODEL_SOURCES, DESTRUCTIVE)
        arg = data.draw(self.argument(action, valid), label="arg")
        method = getattr(self.vm, action)
        if action == "place":
            self.run(action, arg, lambda: method(arg, POOL))
        else:
            self.run(action, arg, lambda: method(arg) if arg is not None else method())

    @invariant()
    def state_is_declared(self):
        assert self.vm.state in MODEL_STATES

    @invariant()
    def version_counts_events(self):
        assert self.vm.version == len(self.events)

    @invariant()
    def host_held_only_where_expected(self):
        holds = self.vm.state in HOLDS_HOST or (
            self.vm.state == "Allocated" and self.vm.is_placed()
        )
        assert (self.vm.host_id is not None) == holds

    @invariant()
    def replay_reproduces_the_aggregate(self):
        assert vars(replayed(self.events)) == vars(self.vm)

    def teardown(self):
        for e in self.events:
            assert_payload_round_trips(e)


VmMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_vm_state_machine = VmMachine.TestCase
