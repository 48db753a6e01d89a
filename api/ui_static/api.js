// The JSON API and the live stream, with the token of this tab.

const KEY = "cloud-engine.token";

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(ROLE);
  }
}

// The role found at login, so a reload draws its first view at once; any
// request the token may no longer make logs the tab out (401) or is refused.
const ROLE = "cloud-engine.role";

export function role() {
  return sessionStorage.getItem(ROLE);
}

export function setRole(value) {
  sessionStorage.setItem(ROLE, value);
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? `${problem.title}: ${problem.detail}` : `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export async function call(method, path, body, key) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (key) headers["Idempotency-Key"] = key;
  const reply = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await reply.text();
  const data = text ? JSON.parse(text) : null;
  if (!reply.ok) throw new ApiError(reply.status, data);
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body, key) => call("POST", path, body ?? {}, key);

// Every item of a collection (pages of 500).
export async function all(collection, query = "") {
  const items = [];
  let cursor = null;
  do {
    const params = new URLSearchParams(query);
    params.set("limit", "500");
    if (cursor) params.set("cursor", cursor);
    const page = await get(`/v1/${collection}?${params}`);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

// The live stream: server-sent events read with fetch (EventSource cannot
// send the Authorization header). Reconnects after a second when it ends.
export function follow(onEvent, onState) {
  let stopped = false;
  let controller = null;
  async function run() {
    while (!stopped) {
      controller = new AbortController();
      try {
        const reply = await fetch("/v1/stream", {
          headers: { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" },
          signal: controller.signal,
        });
        if (!reply.ok) throw new ApiError(reply.status, null);
        onState(true);
        const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = block
              .split("\n")
              .filter((line) => line.startsWith("data: "))
              .map((line) => line.slice(6))
              .join("\n");
            if (data) onEvent(JSON.parse(data));
          }
        }
      } catch (error) {
        if (stopped) return;
      }
      onState(false);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  run();
  return () => {
    stopped = true;
    if (controller) controller.abort();
  };
}
