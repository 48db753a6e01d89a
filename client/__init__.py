"""The client side of `cloud-engine`: commands a person runs against a
cloud-engine API. It speaks HTTP only (and the console's WebSocket), never
to the database or the broker, so it works from any machine with a token."""
