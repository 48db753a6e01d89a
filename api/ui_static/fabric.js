// The fabric as a tree: zone > pod > cluster > host, with each level's pools
// and capacity bars. Administrators only; hosts enter and leave maintenance.

import { all, post } from "./api.js";
import { bar, h } from "./dom.js";

const GIB = 1 << 30;

function hostItem(host, ui, reload) {
  const a = host.attributes;
  // Entering maintenance drains the host (an operation); while it drains
  // (PrepareForMaintenance, ErrorInMaintenance) it can be cancelled.
  const [action, label] =
    host.state === "Maintenance" ? ["exit-maintenance", "Exit maintenance"]
    : ["PrepareForMaintenance", "ErrorInMaintenance"].includes(host.state)
      ? ["cancel-maintenance", "Cancel maintenance"]
      : ["enter-maintenance", "Enter maintenance"];
  return h(
    "li",
    { "data-host": host.id },
    h("span", { class: "node" }, "Host ", h("strong", { text: host.name }), " ",
      h("span", { class: `state s-${host.state}`, text: host.state })),
    bar("CPU", a.cpus_used ?? 0, a.cpus_total ?? a.cpu_cores ?? 0, "vCPUs"),
    bar("RAM", (a.ram_used_mb ?? 0) / 1024, (a.ram_total_mb ?? a.ram_mb ?? 0) / 1024, "GiB"),
    h("a", { href: `#/history/hosts/${host.id}`, text: "History" }),
    " ",
    h("button", {
      type: "button",
      "aria-label": `${label}: ${host.name}`,
      onclick: async () => {
        await ui.act(`${label} ${host.name}`, () => post(`/v1/hosts/${host.id}/${action}`, {}));
        reload();
      },
    }, label),
  );
}

function poolItem(pool) {
  const a = pool.attributes;
  const total = a.total_bytes ?? a.capacity_bytes ?? 0;
  return h(
    "li",
    { "data-pool": pool.id },
    h("span", { class: "node" }, "Pool ", h("strong", { text: pool.name }), ` (${a.scope ?? "pool"}) `,
      h("span", { class: `state s-${pool.state}`, text: pool.state })),
    bar("Storage", (a.used_bytes ?? 0) / GIB, total / GIB, "GiB"),
  );
}

export async function fabric(root, ui) {
  const load = async () => {
    const [zones, pods, clusters, hosts, pools] = await Promise.all(
      ["zones", "pods", "clusters", "hosts", "storage-pools"].map((c) => all(c)),
    );
    const under = (items, field, id) => items.filter((i) => i.attributes[field] === id);
    const reload = () => load().then((tree) => root.querySelector(".tree").replaceWith(tree));
    const tree = h(
      "ul",
      { class: "tree", role: "list" },
      zones.map((zone) =>
        h("li", {},
          h("span", { class: "node" }, "Zone ", h("strong", { text: zone.name }), " ",
            h("span", { class: `state s-${zone.state}`, text: zone.state })),
          h("ul", {},
            pools.filter((p) => p.zone_id === zone.id && !p.attributes.cluster_id).map(poolItem),
            under(pods, "zone_id", zone.id).map((pod) =>
              h("li", {},
                h("span", { class: "node" }, "Pod ", h("strong", { text: pod.name })),
                h("ul", {},
                  under(clusters, "pod_id", pod.id).map((cluster) =>
                    h("li", {},
                      h("span", { class: "node" }, "Cluster ", h("strong", { text: cluster.name })),
                      h("ul", {},
                        under(pools, "cluster_id", cluster.id).map(poolItem),
                        under(hosts, "cluster_id", cluster.id).map((host) =>
                          hostItem(host, ui, reload)),
                      ))))))))),
    );
    return tree;
  };
  const tree = await load();
  root.replaceChildren(h("h1", { text: "Fabric" }), tree);
  let pending = null;
  // Capacity changes as VMs come and go: redraw (at most once a second).
  return ui.listen((event) => {
    if (!["host", "storage_pool", "zone", "pod", "cluster"].includes(event.aggregate_type)) return;
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      const fresh = await load();
      const old = root.querySelector(".tree");
      if (old) old.replaceWith(fresh);
    }, 1000);
  });
}
