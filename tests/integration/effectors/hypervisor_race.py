"""Run as a script: threads calling through one Hypervisor while another
thread's transient failures make it reconnect. Before the fix this crashed
the process (SIGSEGV: the connection was closed under the other threads), so
it runs in a process of its own and the test reads its exit status.

Prints `calls=<n> errors=<n> opened=<n> overlapped=<n>` (connections opened;
observe calls that ended on a connection another thread had dropped) and
exits 0 when it lives.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import uuid

import libvirt
import structlog

from cloud_engine.effectors.hypervisor import Hypervisor, HypervisorError


class Flaky(Hypervisor):
    """Takes libvirt's "no such domain" for a transient error: a real libvirt
    error that makes it reconnect whenever a test likes."""

    opened = 0

    def error(self, action: str, e: libvirt.libvirtError) -> HypervisorError:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return HypervisorError(self.uri, action, libvirt.VIR_ERR_RPC, "injected")
        return super().error(action, e)

    def _open(self) -> libvirt.virConnect:
        self.opened += 1
        return super()._open()


def main(uri: str, failures: int = 300, observers: int = 4) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    hv = Flaky(uri, attempts=2, base_delay=0.0001, max_delay=0.0001)
    stop = threading.Event()
    errors: list[str] = []
    calls = overlapped = 0
    name = f"ce-race-{uuid.uuid4().hex[:8]}"
    # A network of its own (defined, never started), so every observe makes
    # the call the crash was seen in, even on a host with no other network.
    network = hv.conn.networkDefineXML(f"<network><name>{name}</name></network>")

    def observe(conn: libvirt.virConnect) -> None:
        nonlocal overlapped
        for net in conn.listAllNetworks():
            net.isPersistent()
            net.XMLDesc(0)
        for dom in conn.listAllDomains():
            dom.info()
        if conn is not hv._conn:  # another thread dropped it meanwhile
            overlapped += 1

    def observer() -> None:
        nonlocal calls
        while not stop.is_set():
            try:
                hv.call("observe", observe)
            except Exception as e:  # any of them is the bug this looks for
                errors.append(repr(e))
            calls += 1

    def flaky(conn: libvirt.virConnect) -> None:
        conn.lookupByName(name)  # no domain has the network's name

    def breaker() -> None:
        for _ in range(failures):
            with contextlib.suppress(HypervisorError):
                hv.call("flaky", flaky)
        stop.set()

    threads = [threading.Thread(target=observer) for _ in range(observers)]
    threads.append(threading.Thread(target=breaker))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        network.undefine()
    print(f"calls={calls} errors={len(errors)} opened={hv.opened} overlapped={overlapped}")
    for e in errors[:3]:
        print(e)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
