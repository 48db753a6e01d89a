// Building the page from data: text is always set as text, never parsed.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function table(caption, headings, rows) {
  return h(
    "table",
    {},
    h("caption", { text: caption }),
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col", text: t })))),
    rows instanceof HTMLTableSectionElement ? rows : h("tbody", {}, rows),
  );
}

// A capacity bar: a native <meter> (announced with its value) and the figures.
export function bar(label, used, total, unit) {
  const safeTotal = total > 0 ? total : 1;
  const text = `${fmt(used)} of ${fmt(total)} ${unit}`;
  return h(
    "div",
    { class: "bar" },
    h("span", { class: "bar-label", text: label }),
    h("meter", {
      min: 0,
      max: safeTotal,
      value: Math.min(used, safeTotal),
      low: safeTotal * 0.7,
      high: safeTotal * 0.9,
      optimum: 0,
      "aria-label": `${label}: ${text}`,
    }),
    h("span", { class: "bar-text", text }),
  );
}

export function fmt(n) {
  return Number.isInteger(n) ? String(n) : Number(n).toFixed(1);
}

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return h("time", { datetime: iso, text: d.toISOString().replace("T", " ").slice(0, 19) });
}

export function short(id) {
  return id ? String(id).slice(0, 8) : "";
}
