"""A template to deploy from, for tests that drive the command service."""

from __future__ import annotations

from uuid import UUID

from engine.commands.storage import (
    MarkTemplateDownloaded,
    RegisterTemplate,
    RequestTemplateDownload,
)
from engine.service import CommandService


def register_template(service: CommandService, zone: UUID) -> UUID:
    """A 1 MiB qcow2 template in zone, Registered (not downloaded)."""
    return service.execute(
        RegisterTemplate(
            name="t",
            zone_id=zone,
            url="http://127.0.0.1/t.qcow2",
            format="qcow2",
            size_bytes=1 << 20,
            os_type="None",
        )
    ).aggregate_id


def ready_template(service: CommandService, zone: UUID) -> UUID:
    """A template in zone that VMs can be deployed from (Ready, as if the
    effector had downloaded it)."""
    template = register_template(service, zone)
    service.execute(RequestTemplateDownload(template_id=template))
    service.execute(MarkTemplateDownloaded(template_id=template))
    return template
