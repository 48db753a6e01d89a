"""The HTTP API: Starlette + uvicorn, JSON through msgspec (see docs/api.md).

Commands become engine commands submitted to the CommandService; reads come
from the read models (rm_<type>) and the event log. Nothing in engine/
imports from here.
"""
