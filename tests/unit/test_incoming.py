"""A CloudEvent read from the bus turns back into the domain event that was stored."""

from eventsourcing.utils import get_topic

from cloud_engine.bus.cloudevents import from_record
from cloud_engine.bus.incoming import domain_event
from cloud_engine.bus.naming import all_event_types
from cloud_engine.bus.outgoing import OutgoingCodec
from cloud_engine.engine.mapper import MsgspecMapper
from tests.scenarios import in_memory_scenario


def test_every_event_type_survives_the_bus_round_trip():
    mapper = MsgspecMapper()
    codec = OutgoingCodec("cloudengine", "/test")
    seen = set()
    for position, event in enumerate(in_memory_scenario().events, start=1):
        stored = mapper.to_stored_event(event)
        record = codec.record(
            position, stored.originator_id, stored.originator_version, stored.topic, stored.state
        )
        received = from_record(record.headers, record.value)
        back = domain_event(received)
        assert type(back) is type(event)
        assert back == event
        seen.add(get_topic(type(event)))
    assert len(seen) == len(all_event_types())
