"""The event bus: stored events to Kafka as CloudEvents, and consumers of them.

Depends on engine/ for the event catalog and the store; engine/ process
managers, projections/ and effectors/ consume through bus.consumer.
"""
