"""ImageStore: secondary storage holding templates and ISOs for a zone."""

from __future__ import annotations

from typing import Literal, get_args
from urllib.parse import urlsplit
from uuid import UUID

from eventsourcing.domain import event

from cloud_engine.engine.aggregate import require, require_name
from cloud_engine.engine.fabric.lifecycle import Switchable

ImageStoreState = Literal["Enabled", "Disabled"]
ImageStoreProtocol = Literal["nfs", "file", "http"]

# The protocol says how effectors mount or fetch the store, so the URL has to
# agree with it; "file" also takes a bare absolute path.
_SCHEMES: dict[str, tuple[str, ...]] = {
    "nfs": ("nfs",),
    "file": ("file",),
    "http": ("http", "https"),
}


def _require_store_url(url: str, protocol: ImageStoreProtocol) -> None:
    parts = urlsplit(url)
    if protocol == "file" and url.startswith("/"):
        ok = True
    elif protocol == "file":
        ok = parts.scheme == "file" and parts.path.startswith("/")
    else:
        ok = parts.scheme in _SCHEMES[protocol] and bool(parts.netloc)
    ok = ok and url.startswith((f"{parts.scheme}://", "/")) and not any(c.isspace() for c in url)
    require(ok, f"url is not a valid {protocol} location", field="url")


class ImageStore(Switchable):
    entity = "image store"

    @event("Created")
    def __init__(self, zone_id: UUID, name: str, url: str, protocol: ImageStoreProtocol) -> None:
        self.zone_id = zone_id
        self.name = name
        self.url = url
        self.protocol: ImageStoreProtocol = protocol
        self.state: ImageStoreState = "Enabled"

    @classmethod
    def create(
        cls,
        *,
        zone_id: UUID,
        name: str,
        url: str,
        protocol: ImageStoreProtocol,
        id: UUID | None = None,
    ) -> ImageStore:
        require_name(name)
        require(
            protocol in get_args(ImageStoreProtocol),
            "protocol must be one of nfs, file, http",
            field="protocol",
        )
        _require_store_url(url, protocol)
        store: ImageStore = cls._new(id=id, zone_id=zone_id, name=name, url=url, protocol=protocol)
        return store
