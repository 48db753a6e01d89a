"""GET /v1/vms/{id}/console: the VM's serial console over a WebSocket.

For the VM's owner and admins, with the bearer token every endpoint takes
(the Authorization header of the upgrade request). The API process opens
the console itself, on the libvirt of the host the log puts the VM on
(effectors/compute/console.py, libvirt's virDomainOpenConsole): a console
is a byte stream, not a change of state, so it is not work for the
effector; it reads the Host's libvirt URI from the log as the effector
does. Guest output goes to the client as binary messages; what the client
sends (binary or text) is typed into the console. One client at a time:
a second one takes the console over (the first is closed).

Refusals close the socket before any byte of the console is sent, with a
code and a reason: 4401 no or unknown token, 4404 no such VM (or another
account's), 4409 the VM is not running, 4502 its host's console cannot be
opened.
"""

from __future__ import annotations

import asyncio
import contextlib
from uuid import UUID

import asyncpg
import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from cloud_engine.api.auth import bearer_token
from cloud_engine.api.context import ApiContext
from cloud_engine.api.problems import ApiError
from cloud_engine.effectors.compute.console import ConsoleError, SerialConsole
from cloud_engine.engine.fabric.host import Host
from cloud_engine.engine.virtual.vm import VirtualMachine

log = structlog.get_logger("api.console")

READ_S = 0.5


async def console_endpoint(websocket: WebSocket) -> None:
    ctx: ApiContext = websocket.app.state.api
    await websocket.accept()
    try:
        vm_id = UUID(str(websocket.path_params["id"]))
        opened = await _open(ctx, websocket, vm_id)
    except _Refused as refused:
        await websocket.close(code=refused.code, reason=refused.reason)
        return
    console, account = opened
    log.info("console_opened", vm_id=str(vm_id), account=account)
    try:
        await _bridge(websocket, console)
    finally:
        await asyncio.to_thread(console.close)
        log.info("console_closed", vm_id=str(vm_id))


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


async def _open(ctx: ApiContext, websocket: WebSocket, vm_id: UUID) -> tuple[SerialConsole, str]:
    try:
        token = bearer_token(websocket.headers.get("authorization"))
        principal = await ctx.tokens.verify(token)
    except ApiError as e:
        raise _Refused(4401, e.detail) from None
    except (TimeoutError, OSError, asyncpg.PostgresError):
        raise _Refused(4503, "cannot check the token: the database is unreachable") from None
    if principal is None:
        raise _Refused(4401, "the bearer token is not valid")
    vm = await asyncio.to_thread(ctx.store.load, vm_id)
    if not isinstance(vm, VirtualMachine) or not (
        principal.is_admin or vm.account == principal.account
    ):
        raise _Refused(4404, f"vm {vm_id} not found")
    if vm.state != "Running" or vm.host_id is None:
        raise _Refused(4409, f"vm {vm_id} is {vm.state}: only a running VM has a console")
    host = await asyncio.to_thread(ctx.store.load, vm.host_id)
    if not isinstance(host, Host):
        raise _Refused(4409, f"vm {vm_id} has no host")
    try:
        console = await asyncio.to_thread(SerialConsole, host.libvirt_uri, vm_id)
    except ConsoleError as e:
        log.warning("console_unavailable", vm_id=str(vm_id), error=str(e))
        raise _Refused(4502, "the VM's console cannot be opened on its host") from None
    return console, vm.account


async def _bridge(websocket: WebSocket, console: SerialConsole) -> None:
    async def out() -> None:
        while True:
            data = await asyncio.to_thread(console.read, READ_S)
            if data:
                await websocket.send_bytes(data)

    async def into() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") or (message.get("text") or "").encode()
            if data:
                await asyncio.to_thread(console.write, data)

    tasks = [asyncio.create_task(out()), asyncio.create_task(into())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if isinstance(error, ConsoleError):
                with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                    await websocket.close(code=1011, reason=f"the console closed: {error}")
            elif error is not None and not isinstance(error, WebSocketDisconnect):
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
