"""One automation component's way of sending a command: through the engine's
command path, as any client does, under the component's actor name and an
idempotency key, so a decision taken twice (a retried round, a restarted
process) is recorded once. A refusal is a decision the engine made (the
aggregate moved on meanwhile): logged, not raised; the next round judges
again on what is recorded then."""

from __future__ import annotations

from typing import Any

from structlog.typing import FilteringBoundLogger

from cloud_engine.engine.commands.base import Command, CommandContext
from cloud_engine.engine.errors import DomainError
from cloud_engine.engine.service import CommandService


class Sender:
    def __init__(
        self,
        service: CommandService,
        actor: str,
        log: FilteringBoundLogger,
        *,
        refused: str,
        recorded: str | None = None,
    ) -> None:
        self.service = service
        self.actor = actor
        self.log = log
        self.refused = refused  # the log line's name when the engine refuses
        self.recorded = recorded  # the log line's name when recorded (None: none)
        self.sent = 0  # commands recorded

    async def __call__(self, command: Command, key: str | None) -> bool:
        """Send the command, keyed (request id and idempotency key) by key;
        True if recorded, False if refused."""
        context = CommandContext(actor=self.actor, request_id=key or "", idempotency_key=key)
        fields: dict[str, Any] = {"command": type(command).__name__}
        if key is not None:
            fields["key"] = key
        try:
            await self.service.execute_async(command, context)
        except DomainError as e:
            self.log.warning(self.refused, reason=str(e), **fields)
            return False
        self.sent += 1
        if self.recorded is not None:
            self.log.info(self.recorded, **fields)
        return True
