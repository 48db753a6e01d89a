"""Network lifecycle and IP allocation against a small independent reference model."""

import ipaddress
from uuid import uuid4

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cloud_engine.engine.errors import CapacityExceeded, Conflict, InvalidTransition, Validation
from cloud_engine.engine.mapper import MsgspecMapper
from cloud_engine.engine.virtual.network import Network
from tests.unit.support import assert_refused, replayed


class NetworkMachine(RuleBasedStateMachine):
    @initialize(
        prefix=st.integers(min_value=26, max_value=30),
        gateway_offset=st.none() | st.integers(min_value=1, max_value=2),
        isolation=st.sampled_from(["VLAN", "none"]),
    )
    def create(self, prefix, gateway_offset, isolation):
        cidr = ipaddress.IPv4Network(f"192.168.4.0/{prefix}")
        self.base = int(cidr.network_address)
        self.size = cidr.num_addresses
        # The model: host numbers are offsets 1..size-2 from the network address.
        self.gateway = 1 if gateway_offset is None else self.size - 1 - gateway_offset
        gateway = None if gateway_offset is None else self.ip(self.gateway)
        self.network = Network.create(
            account="acct",
            name="net",
            zone_id=uuid4(),
            cidr=str(cidr),
            gateway=gateway,
            isolation=isolation,
            physical_network_id=None if isolation == "none" else uuid4(),
        )
        self.isolation = isolation
        self.state = "Allocated"
        self.tag = None
        self.taken: dict[int, object] = {}
        self.events = list(self.network.collect_events())

    # Model helpers --------------------------------------------------------------------

    def ip(self, offset):
        return str(ipaddress.IPv4Address(self.base + offset))

    def hosts(self):
        return [o for o in range(1, self.size - 1) if o != self.gateway]

    def lowest_free(self):
        free = [o for o in self.hosts() if o not in self.taken]
        return min(free) if free else None

    def attempt(self, action, expected_error):
        """Run action; if the model expects a refusal, check it left no trace."""
        if expected_error is None:
            result = action()
            self.events.extend(self.network.collect_events())
            return result
        assert_refused(self.network, expected_error, action)
        return None

    # Rules ---------------------------------------------------------------------------

    @rule()
    def allocate(self):
        lowest = self.lowest_free()
        if self.state not in ("Allocated", "Implemented"):
            error = InvalidTransition
        else:
            error = CapacityExceeded if lowest is None else None
        ip_id = uuid4()
        address = self.attempt(lambda: self.network.allocate_ip(ip_id, None), error)
        if error is None:
            assert address == self.ip(lowest)
            self.taken[lowest] = ip_id

    @rule(offset=st.integers(min_value=-2, max_value=66))
    def allocate_specific(self, offset):
        if self.state not in ("Allocated", "Implemented"):
            error = InvalidTransition
        elif not 1 <= offset <= self.size - 2 or offset == self.gateway:
            error = Validation
        elif offset in self.taken:
            error = Conflict
        else:
            error = None
        ip_id = uuid4()
        address = self.attempt(
            lambda: self.network.allocate_ip(ip_id, uuid4(), self.ip(offset)), error
        )
        if error is None:
            assert address == self.ip(offset)
            self.taken[offset] = ip_id

    @rule(data=st.data())
    def release_allocated(self, data):
        if not self.taken:
            return
        offset = data.draw(st.sampled_from(sorted(self.taken)))
        self.attempt(lambda: self.network.release_ip(self.ip(offset)), None)
        del self.taken[offset]

    @rule(offset=st.integers(min_value=0, max_value=63))
    def release_unallocated(self, offset):
        if offset in self.taken:
            return
        error = InvalidTransition if self.state == "Destroyed" else Conflict
        self.attempt(lambda: self.network.release_ip(self.ip(offset)), error)

    @rule(tag=st.integers(min_value=0, max_value=4096))
    def assign_tag(self, tag):
        if self.state not in ("Allocated", "Shutdown"):
            error = InvalidTransition
        elif self.isolation == "none" or self.tag is not None:
            error = Conflict
        elif not 1 <= tag <= 4094:
            error = Validation
        else:
            error = None
        self.attempt(lambda: self.network.assign_tag(tag), error)
        if error is None:
            self.state, self.tag = "Implemented", tag

    @rule()
    def implement(self):
        if self.state not in ("Allocated", "Shutdown"):
            error = InvalidTransition
        elif self.isolation != "none" and self.tag is None:
            error = Conflict
        else:
            error = None
        self.attempt(self.network.implement, error)
        if error is None:
            self.state = "Implemented"

    @rule()
    def shutdown(self):
        error = None if self.state == "Implemented" else InvalidTransition
        self.attempt(self.network.shutdown, error)
        if error is None:
            self.state = "Shutdown"

    @rule()
    def release_tag(self):
        if self.state != "Shutdown":
            error = InvalidTransition
        else:
            error = Conflict if self.tag is None else None
        released = self.attempt(self.network.release_tag, error)
        if error is None:
            assert released == self.tag
            self.tag = None

    @rule()
    def destroy(self):
        if self.state not in ("Allocated", "Shutdown"):
            error = InvalidTransition
        else:
            error = Conflict if self.taken or self.tag is not None else None
        self.attempt(self.network.destroy, error)
        if error is None:
            self.state = "Destroyed"

    @rule()
    def replay_matches(self):
        rebuilt = replayed(self.events, MsgspecMapper())
        assert dict(rebuilt.allocated) == dict(self.network.allocated)
        assert (rebuilt.state, rebuilt.tag, rebuilt.free_count) == (
            self.network.state,
            self.network.tag,
            self.network.free_count,
        )
        assert rebuilt.version == self.network.version

    # Invariants ------------------------------------------------------------------------

    @invariant()
    def matches_model(self):
        assert self.network.state == self.state
        assert self.network.tag == self.tag
        assert dict(self.network.allocated) == {self.ip(o): i for o, i in self.taken.items()}

    @invariant()
    def addresses_are_unique_hosts(self):
        allocated = self.network.allocated
        offsets = [int(ipaddress.IPv4Address(a)) - self.base for a in allocated]
        assert len(set(offsets)) == len(offsets)
        assert len(set(allocated.values())) == len(offsets)
        for offset in offsets:
            assert 1 <= offset <= self.size - 2
            assert offset != self.gateway

    @invariant()
    def free_count_consistent(self):
        assert self.network.free_count == len(self.hosts()) - len(self.taken)


TestNetworkStateMachine = NetworkMachine.TestCase
TestNetworkStateMachine.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
