"""bench/chaos.py's load: clients over HTTP deploying VMs and driving them
through their lifecycle, with volume and network commands among them; the
Shape says what they ask for (test-driver hosts or lab hosts)."""

from __future__ import annotations

import http.client
import json
import random
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from api_http import send

FINISHED = ("succeeded", "failed", "compensated")


@dataclass(frozen=True)
class Shape:
    """What the clients ask for. On the test driver (the defaults): VMs of
    64 MiB without NICs, as many as the load makes, networks without
    isolation. On lab hosts every VM is a TCG QEMU, so fewer and each with a
    NIC on a VXLAN network (the fabric's or one of the client's own: its
    first VM gives it a tag), half of them HA-enabled."""

    ram_mb: int = 64
    isolation: str = "none"
    live_vms: int | None = None  # per client, at most
    networks: tuple[str, ...] = ()  # the fabric's, for NICs; none: no NICs
    ha: bool = False


class Client(threading.Thread):
    """Deploys VMs and drives them through their lifecycle over HTTP."""

    def __init__(
        self,
        n: int,
        api: str,
        token: str,
        fabric: Any,
        hosts: list[str],
        seed: int,
        storage: bool = True,
        shape: Shape | None = None,
    ):
        super().__init__(name=f"client-{n}", daemon=True)
        self.storage = storage
        self.shape = shape or Shape()
        self.n, self.api, self.token, self.fabric, self.hosts = n, api, token, fabric, hosts
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.operations: list[str] = []
        self.vms: dict[str, str] = {}  # id -> the state this client last drove it to
        self.volumes: list[str] = []
        self.networks: list[str] = []
        self.ips: list[str] = []
        self.refused: dict[int, int] = defaultdict(int)
        self.errors: list[str] = []  # answers that are no answer (500s)
        self.why: Counter[str] = Counter()
        self.count = 0

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One command, retried on 503 and lost connections with the same
        Idempotency-Key until answered."""
        key = str(uuid.uuid4())
        while True:
            try:
                status, raw = send(
                    method,
                    f"{self.api}{path}",
                    self.token,
                    body,
                    key=key if method == "POST" else None,
                    timeout=30,
                )
            except (OSError, http.client.HTTPException):
                # The API is down, or was killed mid-answer (IncompleteRead):
                # a supervisor starts it again, and the same key is sent.
                time.sleep(0.3)
                continue
            if 200 <= status < 300:
                return status, json.loads(raw or b"{}")
            try:
                reply = json.loads(raw or b"{}")
            except ValueError:
                reply = None
            if reply is None or status == 500:
                # Never an answer: a 500 or a body that is no problem
                # document is a violation; the command is sent again.
                self.errors.append(f"{method} {path} answered {status}: {raw[:200]!r}")
            elif status not in (502, 503, 504):
                return status, reply
            time.sleep(0.3)

    def refuse(self, status: int, path: str, reply: Any) -> None:
        """Counts a refusal, by status and by what and why (ids left out)."""
        self.refused[status] += 1
        what = re.sub(r"/[0-9a-f-]{36}", "/{id}", path)
        why = re.sub(r"[0-9a-f-]{36}", "{id}", str(reply.get("detail", "")))[:80]
        self.why[f"{what} {status} {why}"] += 1

    def operation(self, method: str, path: str, body: Any = None) -> bool:
        status, reply = self.call(method, path, body)
        self.count += 1
        if status == 202:
            self.operations.append(reply["operation_id"])
            return True
        self.refuse(status, path, reply)
        return False

    def command(self, path: str, body: Any = None) -> str | None:
        """A command that completes once recorded: the resource's id."""
        status, reply = self.call("POST", path, body if body is not None else {})
        self.count += 1
        if status == 202:
            return str(reply["resource_id"])
        self.refuse(status, path, reply)
        return None

    def storage_or_network(self, live: list[str]) -> None:
        """Volumes (create, attach to a VM, detach) and networks (create,
        allocate and release an IP, destroy): refused ones (a VM not
        stopped, a network still holding addresses) are part of the load."""
        action = self.rng.choice(["volume", "attach", "detach", "network", "ip", "release", "drop"])
        if action == "volume":
            body = {"name": f"d{self.n}-{len(self.volumes)}", "zone_id": str(self.fabric.zone)}
            made = self.command("/v1/volumes", {**body, "size_gb": 1, "account": "chaos"})
            if made is not None:
                self.volumes.append(made)
        elif action in ("attach", "detach") and self.volumes and live:
            volume = self.rng.choice(self.volumes)
            body = {"vm_id": self.rng.choice(live)} if action == "attach" else {}
            self.operation("POST", f"/v1/volumes/{volume}/{action}", body)
        elif action == "network" and len(self.networks) < 40:
            cidr = f"10.{100 + self.n}.{len(self.networks)}.0/24"
            body = {"name": f"n{self.n}-{len(self.networks)}", "zone_id": str(self.fabric.zone)}
            body.update(cidr=cidr, isolation=self.shape.isolation)
            if self.shape.networks:  # for the client's VMs' NICs: the same account
                body["account"] = "chaos"
            made = self.command("/v1/networks", body)
            if made is not None:
                self.networks.append(made)
        elif action == "ip" and self.networks:
            made = self.command("/v1/ip-addresses", {"network_id": self.rng.choice(self.networks)})
            if made is not None:
                self.ips.append(made)
        elif action == "release" and self.ips:
            ip = self.ips.pop(self.rng.randrange(len(self.ips)))
            self.command(f"/v1/ip-addresses/{ip}/release")
        elif action == "drop" and self.networks:
            network = self.rng.choice(self.networks)
            if self.command(f"/v1/networks/{network}/destroy") is not None:
                self.networks.remove(network)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.step()
            except Exception as error:  # a client that dies would hide it
                self.errors.append(f"client {self.n} failed: {error!r}")
                time.sleep(0.3)

    def step(self) -> None:
        live = [v for v, s in self.vms.items() if s != "destroyed"]
        choice = self.rng.random()
        if self.storage and live and choice > 0.75:
            self.storage_or_network(live)
        elif not live or (choice < 0.3 and self.room(live)):
            status, reply = self.call("POST", "/v1/vms", self.deploy_body())
            self.count += 1
            if status == 202:
                self.operations.append(reply["operation_id"])
                self.vms[reply["resource_id"]] = "running"
            else:
                self.refuse(status, "/v1/vms", reply)
        else:
            vm = self.rng.choice(live)
            action = self.rng.choice(["stop", "start", "migrate", "destroy", "stop"])
            body = {"host_id": self.rng.choice(self.hosts)} if action == "migrate" else {}
            if self.operation("POST", f"/v1/vms/{vm}/{action}", body) and action == "destroy":
                self.vms[vm] = "destroyed"
        time.sleep(self.rng.uniform(0.05, 0.4))

    def room(self, live: list[str]) -> bool:
        """Whether to deploy one more. At the cap, the client looks at its
        VMs: those gone (a failed deploy compensates by expunging) free
        their place, those in Error are destroyed, as an operator would."""
        if self.shape.live_vms is None or len(live) < self.shape.live_vms:
            return True
        for vm in live:
            status, reply = self.call("GET", f"/v1/vms/{vm}")
            state = reply.get("state") if status == 200 else "Expunged"
            gone = state in ("Destroyed", "Expunging", "Expunged")
            if gone or (state == "Error" and self.operation("POST", f"/v1/vms/{vm}/destroy")):
                self.vms[vm] = "destroyed"
        return len([v for v, s in self.vms.items() if s != "destroyed"]) < self.shape.live_vms

    def deploy_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "account": "chaos",
            "name": f"c{self.n}-{len(self.vms)}",
            "zone_id": str(self.fabric.zone),
            "template_id": str(self.fabric.template),
            "spec": {"cpus": 1, "ram_mb": self.shape.ram_mb, "root_disk_gb": 1},
        }
        if self.shape.networks:
            body["network_ids"] = [self.rng.choice([*self.shape.networks, *self.networks])]
        if self.shape.ha:
            body["ha"] = self.rng.random() < 0.5
        return body

    def unfinished(self) -> list[str]:
        left = []
        for op in self.operations:
            status, reply = self.call("GET", f"/v1/operations/{op}")
            if status != 200 or reply.get("state") not in FINISHED:
                left.append(op)
        return left
