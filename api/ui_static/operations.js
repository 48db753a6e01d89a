// Operations with their steps, newest first, updated live.

import { all, get } from "./api.js";
import { h, short, table, when } from "./dom.js";

const COLLECTION = { vm: "vms", volume: "volumes" };

function steps(op) {
  return h(
    "ol",
    { class: "steps" },
    (op.attributes.steps ?? []).map((s) =>
      h("li", { class: `step ${s.status}` }, `${s.name} `, h("span", { class: "step-status", text: s.status }))),
  );
}

function row(op) {
  const a = op.attributes;
  const collection = COLLECTION[a.resource_type];
  return h(
    "tr",
    { "data-operation": op.id },
    h("th", { scope: "row" }, h("a", { href: `#/history/operations/${op.id}`, text: a.kind ?? op.name })),
    h("td", {}, h("span", { class: `state s-${op.state}`, text: op.state })),
    h("td", {}, collection
      ? h("a", { href: `#/history/${collection}/${a.resource_id}`, text: `${a.resource_type} ${short(a.resource_id)}` })
      : `${a.resource_type ?? ""} ${short(a.resource_id)}`),
    h("td", {}, steps(op), a.error ? h("p", { class: "error", text: a.error }) : null),
    h("td", {}, when(op.created_on)),
  );
}

export async function operations(root, ui) {
  const byId = new Map((await all("operations")).map((op) => [op.id, op]));
  const body = () => [...byId.values()].sort((x, y) => (x.created_on < y.created_on ? 1 : -1))
    .slice(0, 200).map(row);
  const list = table("Operations, newest first", ["Kind", "State", "Resource", "Steps", "Created"], body());
  root.replaceChildren(h("h1", { text: "Operations" }), list);
  return ui.listen(async (event) => {
    if (event.aggregate_type !== "operation") return;
    try {
      const op = await get(`/v1/operations/${event.aggregate_id}`);
      if (op.version < event.version) {
        const then = await get(`/v1/operations/${event.aggregate_id}/state?version=${event.version}`);
        op.version = then.version;
        op.state = then.attributes.state;
        op.attributes = { ...op.attributes, ...then.attributes };
      }
      const known = byId.get(op.id);
      if (known && known.version > op.version) return;
      byId.set(op.id, op);
      list.querySelector("tbody").replaceChildren(...body());
    } catch (error) {
      // Not visible to this token.
    }
  });
}
