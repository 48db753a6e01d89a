"""bench/deploy.py's fabric: the VM size and host shape, one zone, pod and
cluster with a host per libvirt URI, a dir pool, a file image store, and a
small qcow2 template served over loopback HTTP (built by tests/fabric.py,
the builder the tests use); the DeployVm each client submits."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from uuid import UUID

from cloud_engine.engine.commands.operations import DeployVm
from cloud_engine.engine.service import CommandService
from cloud_engine.engine.virtual.vm import VmSpec
from tests.fabric import Fabric as BuiltFabric
from tests.fabric import FabricSpec, ImageStoreSpec, PoolSpec, TemplateSpec, build, hosts_on

MiB = 1024 * 1024
GiB = 1024 * MiB
TEMPLATE_BYTES = 4 * MiB
VM_SPEC = VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)
HOST_CORES = 32
HOST_CPU_OVERCOMMIT = 2.0  # 64 VMs of 1 vCPU per host
HOST_RAM_MB = 65536


Fabric = BuiltFabric[UUID]


def host_uris(count: int, directory: Path, shared: bool) -> list[str]:
    if shared:
        return ["test:///default"] * count
    directory.mkdir(parents=True, exist_ok=True)
    uris = []
    for n in range(count):
        path = directory / f"host-{n}.xml"
        path.write_text("<node/>\n")  # no domains, pools or networks to begin with
        uris.append(f"test://{path}")
    return uris


def one_cluster(service: CommandService, name: str, uris: Sequence[str]) -> Fabric:
    """Zone, pod, cluster and one host per URI (registered together, so the
    service batches them)."""
    spec = FabricSpec(
        zone=name,
        hosts=hosts_on(
            uris, cpu_cores=HOST_CORES, cpu_overcommit=HOST_CPU_OVERCOMMIT, ram_mb=HOST_RAM_MB
        ),
    )
    return build(service, spec)


def create_fabric(
    service: CommandService, name: str, uris: Sequence[str], tmp: Path, template_url: str
) -> Fabric:
    """Zone, pod, cluster, one host per URI, a dir pool, a file image store
    and a registered template (Ready only once downloaded)."""
    spec = FabricSpec(
        zone=name,
        hosts=hosts_on(
            uris, cpu_cores=HOST_CORES, cpu_overcommit=HOST_CPU_OVERCOMMIT, ram_mb=HOST_RAM_MB
        ),
        pools=(PoolSpec(url=str(tmp / f"{name}-primary"), capacity_bytes=1 << 50),),
        image_stores=(ImageStoreSpec(url=str(tmp / f"{name}-secondary")),),
        templates=(
            TemplateSpec(
                url=template_url,
                size_bytes=TEMPLATE_BYTES,
                checksum=template_checksum(tmp),
                state="registered",
            ),
        ),
    )
    return build(service, spec)


def make_template_image(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tiny.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(path), str(TEMPLATE_BYTES)],
        check=True,
        capture_output=True,
    )
    return path


def template_checksum(tmp: Path) -> str:
    """The checksum of the image make_template_image(tmp / "www") made."""
    image = tmp / "www" / "tiny.qcow2"
    return f"sha256:{hashlib.sha256(image.read_bytes()).hexdigest()}"


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """directory over HTTP on 127.0.0.1; yields the base URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def deploy_command(fabric: Fabric, n: int, vm_id: UUID, strategy: str) -> DeployVm:
    return DeployVm(
        account="bench",
        name=f"vm{n}",
        zone_id=fabric.zone,
        template_id=fabric.template,
        spec=VM_SPEC,
        strategy=strategy,  # type: ignore[arg-type]
        vm_id=vm_id,
    )
