// One resource's history (who, when, why: the audit trail from the log) and
// its state at a version or a time.

import { get } from "./api.js";
import { h, table, when } from "./dom.js";

async function entries(collection, id) {
  const items = [];
  let after = 0;
  for (;;) {
    const page = await get(`/v1/${collection}/${id}/events?after_version=${after}`);
    items.push(...page.items);
    if (page.next_after_version === null) return items;
    after = page.next_after_version;
  }
}

function row(entry) {
  return h(
    "tr",
    { "data-version": entry.version },
    h("th", { scope: "row", text: entry.version }),
    h("td", {}, when(entry.time)),
    h("td", { text: entry.event }),
    h("td", { text: entry.actor }),
    h("td", { class: "why" },
      entry.request_id ? h("div", { text: `request ${entry.request_id}` }) : null,
      entry.correlation_id ? h("div", { text: `correlation ${entry.correlation_id}` }) : null,
      entry.causation_id ? h("div", { text: `cause ${entry.causation_id}` }) : null),
    h("td", { text: entry.summary }),
  );
}

export async function history(root, ui, [collection, id]) {
  if (!collection || !id) throw new Error("no resource named");
  const [resource, items] = await Promise.all([get(`/v1/${collection}/${id}`), entries(collection, id)]);
  const title = `${resource.type} ${resource.name ?? resource.id}`;
  const rows = h("tbody", {}, items.map(row));
  const output = h("pre", { class: "state-view", tabindex: 0, "aria-label": "State then" });
  const form = h(
    "form",
    { class: "state-at", "aria-labelledby": "state-title" },
    h("h2", { id: "state-title", text: "State at a version or a time" }),
    h("div", { class: "field" }, h("label", { for: "at-version", text: "Version" }),
      h("input", { id: "at-version", type: "number", min: 1, max: resource.version, value: resource.version })),
    h("div", { class: "field" }, h("label", { for: "at-time", text: "or time (UTC, e.g. 2026-01-01T10:00:00Z)" }),
      h("input", { id: "at-time", type: "text", spellcheck: "false" })),
    h("button", { type: "submit", text: "Show" }),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const at = form.querySelector("#at-time").value.trim();
    const version = form.querySelector("#at-version").value;
    const query = at ? `at=${encodeURIComponent(at)}` : `version=${encodeURIComponent(version)}`;
    try {
      const state = await get(`/v1/${collection}/${id}/state?${query}`);
      output.textContent = `version ${state.version}, modified ${state.modified_on}\n` +
        JSON.stringify(state.attributes, null, 2);
    } catch (error) {
      output.textContent = error.message;
    }
    output.focus();
  });
  root.replaceChildren(
    h("h1", { text: `History of ${title}` }),
    h("p", {}, `Now: `, h("span", { class: `state s-${resource.state}`, text: resource.state ?? "" }),
      ` · version ${resource.version} · account ${resource.account ?? "none"}`),
    table("Events, oldest first: who, when, why", ["Version", "Time", "Event", "Actor", "Why", "Summary"], rows),
    form,
    output,
  );
  const seen = new Set(items.map((i) => i.version));
  return ui.listen(async (event) => {
    if (event.aggregate_id !== id || seen.has(event.version)) return;
    const more = await get(`/v1/${collection}/${id}/events?after_version=${Math.max(...seen, 0)}`);
    for (const entry of more.items) {
      if (seen.has(entry.version)) continue;
      seen.add(entry.version);
      rows.append(row(entry));
    }
  });
}
