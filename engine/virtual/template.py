"""Template: a disk image VMs and root volumes are deployed from.

A template is usable only while Ready. A failed download can be retried
(Error -> Downloading); deactivation hides a Ready template from new
deployments without touching VMs already made from it.

An ISO template (format iso) is a CD-ROM image: it is attached to VMs as
their CD-ROM (vm.attach_iso), and a bootable one can be deployed from (an
empty root disk, the CD-ROM first in the boot order); no volume is ever
made from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal, get_args
from urllib.parse import urlsplit
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import Aggregate, require, require_name
from cloud_engine.engine.virtual.vm import require_reason

TemplateState = Literal["Registered", "Downloading", "Ready", "Error", "Inactive"]
TEMPLATE_STATES: Final[tuple[TemplateState, ...]] = get_args(TemplateState)
TemplateFormat = Literal["qcow2", "raw", "iso"]

TEMPLATE_TRANSITIONS: Final[Mapping[str, tuple[TemplateState, ...]]] = MappingProxyType(
    {
        "download_requested": ("Registered", "Error"),
        "downloaded": ("Downloading",),
        "fail": ("Downloading",),
        "deactivate": ("Ready",),
        "reactivate": ("Inactive",),
    }
)


class Template(Aggregate):
    entity = "template"

    # Templates recorded (and pickled) before ISOs: disk images, bootable.
    bootable = True

    class Created(Aggregate.Created):
        name: str
        zone_id: UUID
        url: str
        format: TemplateFormat
        size_bytes: int
        os_type: str
        checksum: str | None
        # Added later, optional (same version): absent in older records.
        bootable: bool = True

    @event(Created)
    def __init__(
        self,
        name: str,
        zone_id: UUID,
        url: str,
        format: TemplateFormat,
        size_bytes: int,
        os_type: str,
        checksum: str | None,
        bootable: bool = True,
    ) -> None:
        self.name = name
        self.zone_id = zone_id
        self.url = url
        self.format: TemplateFormat = format
        self.size_bytes = size_bytes
        self.os_type = os_type
        self.checksum = checksum
        # An ISO a VM may boot from (disk images always are).
        self.bootable = bootable
        self.state: TemplateState = "Registered"
        self.last_error: str | None = None

    @classmethod
    def create(
        cls,
        name: str,
        zone_id: UUID,
        url: str,
        format: TemplateFormat,
        size_bytes: int,
        os_type: str,
        checksum: str | None = None,
        *,
        id: UUID | None = None,  # the library's keyword
        bootable: bool = True,
    ) -> Template:
        require_name(name)
        parts = urlsplit(url)
        require(
            parts.scheme in ("http", "https") and bool(parts.netloc),
            "url must be an http(s) URL",
            field="url",
        )
        require(
            format in get_args(TemplateFormat), "format must be qcow2, raw or iso", field="format"
        )
        require(bootable or format == "iso", "only an ISO may be non-bootable", field="bootable")
        require(size_bytes > 0, "size_bytes must be positive", field="size_bytes")
        require_name(os_type, "os_type")
        if checksum is not None:
            require_name(checksum, "checksum")
        # cls(...) would refuse id=, see VirtualMachine.create.
        template: Template = cls._create(
            cls.Created,
            id=id,
            name=name,
            zone_id=zone_id,
            url=url,
            format=format,
            size_bytes=size_bytes,
            os_type=os_type,
            checksum=checksum,
            bootable=bootable,
        )
        return template

    def _require(self, action: str) -> None:
        self.require_state(TEMPLATE_TRANSITIONS[action], action)

    def download_requested(self) -> None:
        self._require("download_requested")
        self._download_requested()

    def downloaded(self) -> None:
        self._require("downloaded")
        self._downloaded()

    def fail(self, reason: str) -> None:
        self._require("fail")
        require_reason(reason)
        self._failed(reason)

    def deactivate(self) -> None:
        self._require("deactivate")
        self._deactivated()

    def reactivate(self) -> None:
        self._require("reactivate")
        self._reactivated()

    @event("DownloadRequested")
    def _download_requested(self) -> None:
        self.state = "Downloading"

    @event("Downloaded")
    def _downloaded(self) -> None:
        self.state = "Ready"
        self.last_error = None

    @event("Failed")
    def _failed(self, reason: str) -> None:
        self.state = "Error"
        self.last_error = reason

    @event("Deactivated")
    def _deactivated(self) -> None:
        self.state = "Inactive"

    @event("Reactivated")
    def _reactivated(self) -> None:
        self.state = "Ready"
