// The live stream: every event this token may see, as it is published.

import { h, short, when } from "./dom.js";

const COLLECTIONS = {
  zone: "zones", pod: "pods", cluster: "clusters", host: "hosts", storage_pool: "storage-pools",
  image_store: "image-stores", physical_network: "physical-networks", vm: "vms", volume: "volumes",
  template: "templates", snapshot: "snapshots", network: "networks", nic: "nics",
  ip_address: "ip-addresses", network_rule: "network-rules", operation: "operations",
};

function item(event) {
  const collection = COLLECTIONS[event.aggregate_type];
  const subject = `${event.aggregate_type} ${short(event.aggregate_id)}`;
  return h(
    "li",
    { "data-event": event.id, "data-type": event.type, "data-received": event.received },
    when(event.time),
    " ",
    h("strong", { text: `${event.aggregate_type}.${event.event}` }),
    " ",
    collection ? h("a", { href: `#/history/${collection}/${event.aggregate_id}`, text: subject }) : subject,
    ` v${event.version} `,
    h("span", { class: "actor", text: event.actor }),
  );
}

export async function events(root, ui) {
  const list = h("ol", { class: "events", role: "log", "aria-label": "Live events, newest first" },
    ui.session.recent.map(item));
  root.replaceChildren(
    h("h1", { text: "Live events" }),
    h("p", { class: "help", text: "Events appear here as they are published on the bus." }),
    list,
  );
  return ui.listen((event) => {
    list.prepend(item(event));
    while (list.children.length > 200) list.lastChild.remove();
  });
}
