"""Template work: a template fetched into its zone's image store."""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

import msgspec

from cloud_engine.bus.work import WorkItem
from cloud_engine.effectors.desired import ImageStoreView, TemplateView
from cloud_engine.effectors.handlers.base import Handler, Reads
from cloud_engine.effectors.mapping import Unsupported
from cloud_engine.effectors.storage.pools import StorageError
from cloud_engine.effectors.storage.templates import TemplateImage, fetch, image_path, store_dir

if TYPE_CHECKING:
    from cloud_engine.effectors.executor import Executor


class TemplateSource(msgspec.Struct, frozen=True):
    """A template and the image store it is fetched into."""

    template: TemplateView
    store: ImageStoreView | None

    @property
    def host_id(self) -> None:
        return None  # the store is reached by path, not through a host

    def fetch(self) -> TemplateImage:
        t, store = self.template, self.store
        if store is None:
            raise Unsupported(f"zone {t.zone_id} has no enabled image store for template {t.id}")
        if store.protocol != "file":
            raise Unsupported(f"image store {store.id}: {store.protocol} stores are not served yet")
        dest = image_path(store_dir(store.url), t.id, t.format)
        return fetch(t.url, dest, fmt=t.format, checksum=t.checksum)


async def source(reads: Reads, template_id: UUID, at_least: int) -> TemplateSource | None:
    """A template and its zone's image store: the first enabled one by id,
    so every effector of the zone picks the same store."""
    template = await reads.models.get(TemplateView, "template", template_id, at_least)
    if template is None or not reads.serves(template.zone_id):
        return None
    stores = await reads.models.where(ImageStoreView, "image_store", "zone_id", template.zone_id)
    enabled = [s for s in stores if s.state == "Enabled"]
    # No store: the act reports that as the work's failure.
    return TemplateSource(template=template, store=enabled[0] if enabled else None)


async def read_plan(reads: Reads, item: WorkItem) -> TemplateSource | None:
    return await source(reads, item.aggregate_id, item.version)


def download(executor: Executor, item: WorkItem, plan: TemplateSource) -> str:
    return "fetched" if plan.fetch().fetched else "present"


HANDLERS: dict[str, Handler[TemplateSource]] = {
    "template.download": Handler(read_plan, download, (Unsupported, StorageError, ValueError)),
}
