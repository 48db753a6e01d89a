"""Two command services on one store (an API process beside an engine
process): each decides on current state even when the other changed what it
only read (cached), in the batched and the one-by-one path."""

import pytest

from engine.commands.fabric import CreateZone
from engine.commands.operations import DeployVm
from engine.commands.storage import (
    DeactivateTemplate,
    MarkTemplateDownloaded,
    RegisterTemplate,
    RequestTemplateDownload,
)
from engine.errors import InvalidTransition
from engine.service import CommandService
from engine.virtual.vm import VmSpec

pytestmark = pytest.mark.postgres

SPEC = VmSpec(cpus=1, ram_mb=64, root_disk_gb=1)


def deploy(zone, template, name: str) -> DeployVm:
    return DeployVm(account="a", name=name, zone_id=zone, template_id=template, spec=SPEC)


@pytest.mark.parametrize("batched", [False, True])
def test_a_read_changed_by_another_process_is_seen(store, batched):
    api, engine = CommandService(store), CommandService(store)
    try:
        zone = api.execute(CreateZone(name="z")).aggregate_id
        template = api.execute(
            RegisterTemplate(
                name="t",
                zone_id=zone,
                url="http://127.0.0.1/t.qcow2",
                format="qcow2",
                size_bytes=1 << 20,
                os_type="None",
            )
        ).aggregate_id
        api.execute(RequestTemplateDownload(template_id=template))  # api caches Downloading
        engine.execute(MarkTemplateDownloaded(template_id=template))  # engine caches Ready
        if batched:
            futures = [api.submit(deploy(zone, template, f"v{i}")) for i in range(20)]
            assert all(f.result(30).aggregate_id for f in futures)
        else:
            # Not refused on the stale Downloading the api cached.
            assert api.execute(deploy(zone, template, "first")).aggregate_id
        api.execute(DeactivateTemplate(template_id=template))
        with pytest.raises(InvalidTransition):
            # Not accepted on the stale Ready the engine cached.
            engine.execute(deploy(zone, template, "late"))
    finally:
        api.close()
        engine.close()
