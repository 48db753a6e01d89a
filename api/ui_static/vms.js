// VMs: state, addresses and host, updated live; deploy, start, stop, migrate.

import { all, get, post } from "./api.js";
import { h, short, table } from "./dom.js";

function addresses(vm) {
  return (vm.attributes.nics ?? []).map((n) => n.address).filter(Boolean).join(", ");
}

function field(id, label, input) {
  return h("div", { class: "field" }, h("label", { for: id, text: label }), input);
}

function select(id, items, required = true) {
  return h(
    "select",
    { id, name: id, required },
    required ? null : h("option", { value: "", text: "none" }),
    items.map((i) => h("option", { value: i.id, text: `${i.name} (${short(i.id)})` })),
  );
}

async function deployForm(ui, done) {
  const [zones, templates, networks] = await Promise.all([
    all("zones"),
    all("templates", "state=Ready"),
    all("networks"),
  ]);
  const form = h(
    "form",
    { class: "deploy", "aria-labelledby": "deploy-title" },
    h("h2", { id: "deploy-title", text: "Deploy a VM" }),
    field("vm-name", "Name", h("input", { id: "vm-name", required: true, maxlength: 255 })),
    ui.session.admin
      ? field("vm-account", "Account", h("input", { id: "vm-account", value: ui.session.account || "" }))
      : null,
    field("vm-zone", "Zone", select("vm-zone", zones)),
    field("vm-template", "Template", select("vm-template", templates)),
    field("vm-network", "Network", select("vm-network", networks, false)),
    field("vm-cpus", "vCPUs", h("input", { id: "vm-cpus", type: "number", min: 1, value: 1 })),
    field("vm-ram", "RAM (MiB)", h("input", { id: "vm-ram", type: "number", min: 64, value: 512 })),
    field("vm-disk", "Root disk (GiB)", h("input", { id: "vm-disk", type: "number", min: 1, value: 1 })),
    h("button", { type: "submit", text: "Deploy" }),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const value = (id) => form.querySelector(`#${id}`).value;
    const body = {
      name: value("vm-name"),
      zone_id: value("vm-zone"),
      template_id: value("vm-template"),
      spec: { cpus: Number(value("vm-cpus")), ram_mb: Number(value("vm-ram")),
              root_disk_gb: Number(value("vm-disk")) },
    };
    if (value("vm-network")) body.network_ids = [value("vm-network")];
    if (ui.session.admin && value("vm-account")) body.account = value("vm-account");
    const key = `console-${crypto.randomUUID()}`;
    const accepted = await ui.act(`Deploy ${body.name}`, () => post("/v1/vms", body, key));
    if (accepted) done(accepted.resource_id);
  });
  return form;
}

async function migrateTo(vm, ui) {
  const hosts = (await all("hosts", "state=Enabled")).filter((x) => x.id !== vm.attributes.host_id);
  const dialog = h("dialog", { "aria-labelledby": "migrate-title" });
  const form = h(
    "form",
    { method: "dialog" },
    h("h2", { id: "migrate-title", text: `Migrate ${vm.name}` }),
    field("migrate-host", "Target host", h("select", { id: "migrate-host" },
      h("option", { value: "", text: "let the planner choose" }),
      hosts.map((x) => h("option", { value: x.id, text: x.name })))),
    h("button", { value: "go", text: "Migrate" }),
    " ",
    h("button", { value: "cancel", formnovalidate: true, text: "Cancel" }),
  );
  dialog.append(form);
  document.body.append(dialog);
  dialog.addEventListener("close", async () => {
    const host = form.querySelector("#migrate-host").value;
    dialog.remove();
    if (dialog.returnValue !== "go") return;
    await ui.act(`Migrate ${vm.name}`, () =>
      post(`/v1/vms/${vm.id}/migrate`, host ? { host_id: host } : {}));
  });
  dialog.showModal();
}

function row(vm, hosts, ui) {
  const act = (verb, body = {}) => () =>
    ui.act(`${verb} ${vm.name}`, () => post(`/v1/vms/${vm.id}/${verb}`, body));
  const host = vm.attributes.host_id;
  return h(
    "tr",
    { "data-vm": vm.id },
    h("th", { scope: "row" }, h("a", { href: `#/history/vms/${vm.id}`, text: vm.name })),
    h("td", {}, h("span", { class: `state s-${vm.state}`, "data-state": vm.state, text: vm.state })),
    h("td", { text: addresses(vm) }),
    h("td", { text: host ? (hosts.get(host) ?? short(host)) : "" }),
    h("td", { text: vm.account ?? "" }),
    h("td", { class: "actions" },
      h("button", { type: "button", "aria-label": `Start ${vm.name}`, onclick: act("start") }, "Start"),
      h("button", { type: "button", "aria-label": `Stop ${vm.name}`, onclick: act("stop") }, "Stop"),
      ui.session.admin
        ? h("button", { type: "button", "aria-label": `Migrate ${vm.name}`,
                        onclick: () => migrateTo(vm, ui) }, "Migrate")
        : null,
      h("a", { href: `#/history/vms/${vm.id}`, "aria-label": `History of ${vm.name}` }, "History")),
  );
}

export async function vms(root, ui) {
  const hosts = new Map();
  if (ui.session.admin) for (const x of await all("hosts")) hosts.set(x.id, x.name);
  const byId = new Map((await all("vms")).map((vm) => [vm.id, vm]));
  const body = () => [...byId.values()].filter((vm) => vm.state !== "Expunged")
    .map((vm) => row(vm, hosts, ui));
  const list = table("Virtual machines", ["Name", "State", "Addresses", "Host", "Account", "Actions"], body());
  const redraw = () => list.querySelector("tbody").replaceChildren(...body());
  const place = h("div");
  const open = h("button", {
    type: "button", "aria-expanded": "false", "aria-controls": "deploy-area",
    onclick: async () => {
      if (place.firstChild) {
        place.replaceChildren();
        open.setAttribute("aria-expanded", "false");
        return;
      }
      const form = await deployForm(ui, async (id) => {
        place.replaceChildren();
        open.setAttribute("aria-expanded", "false");
        await refresh(id);
      });
      place.replaceChildren(form);
      open.setAttribute("aria-expanded", "true");
      form.querySelector("input").focus();
    },
  }, "Deploy a VM…");
  place.id = "deploy-area";
  root.replaceChildren(h("h1", { text: "Virtual machines" }), open, place, list);

  // A VM's row from the read model (addresses, host), then its state at the
  // version an event named, from the log: the read model may lag behind.
  async function refresh(id, version) {
    try {
      const vm = await get(`/v1/vms/${id}`);
      if (version && vm.version < version) {
        const then = await get(`/v1/vms/${id}/state?version=${version}`);
        vm.state = then.attributes.state;
        vm.version = then.version;
        vm.attributes = { ...vm.attributes, host_id: then.attributes.host_id };
      }
      const known = byId.get(id);
      if (known && known.version > vm.version) return;
      byId.set(id, vm);
      redraw();
    } catch (error) {
      // Not visible (yet): the next event tries again.
    }
  }
  const later = new Map();
  return ui.listen((event) => {
    if (event.aggregate_type === "vm") refresh(event.aggregate_id, event.version);
    if (event.aggregate_type === "nic" && event.event === "plugged") {
      // Addresses show once the NIC's read model has them.
      const vmId = JSON.parse(JSON.stringify(event.data)).vm_id;
      if (vmId && !later.has(vmId)) {
        later.set(vmId, setTimeout(() => { later.delete(vmId); refresh(vmId); }, 500));
      }
    }
  });
}
