// The console: log in, then one view per hash route. Views read the JSON
// API; the live stream updates what is on screen as events arrive.

import { ApiError, follow, get, role, setRole, setToken, token } from "./api.js";
import { h } from "./dom.js";
import { events } from "./events.js";
import { fabric } from "./fabric.js";
import { history } from "./history.js";
import { operations } from "./operations.js";
import { vms } from "./vms.js";

const session = { admin: false, account: "", listeners: new Set(), recent: [] };
let unfollow = null;

const ROUTES = { fabric, vms, operations, events, history };

function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (el.textContent = ""), 6000);
}

export const ui = {
  session,
  toast,
  // Views subscribe to live events while they are shown.
  listen(fn) {
    session.listeners.add(fn);
    return () => session.listeners.delete(fn);
  },
  // Run an action and report its outcome (problem documents in words).
  async act(what, fn) {
    try {
      const result = await fn();
      toast(`${what}: accepted`);
      return result;
    } catch (error) {
      toast(`${what} refused: ${error.message}`);
      if (error instanceof ApiError && error.status === 401) logout();
      return null;
    }
  },
};

// One request tells the role: the fabric answers an admin, 403 a user and
// 401 a token that is not valid.
async function whoami() {
  try {
    await get("/v1/hosts?limit=1");
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) return false;
    throw error;
  }
}

function showLogin(message = "") {
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("view").replaceChildren();
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message;
  document.getElementById("token").focus();
}

function logout() {
  setToken(null);
  if (unfollow) unfollow();
  unfollow = null;
  location.hash = "";
  showLogin();
}

async function start() {
  try {
    if (role() === null) setRole((await whoami()) ? "admin" : "user");
    session.admin = role() === "admin";
  } catch (error) {
    setToken(null);
    showLogin(error instanceof ApiError && error.status === 401 ? "That token is not valid." : error.message);
    return;
  }
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("who-text").textContent = session.admin ? "administrator" : "tenant";
  for (const el of document.querySelectorAll("[data-admin]")) el.hidden = !session.admin;
  // Open first (it does not hold up the page): no gap between what the
  // first view reads and what the stream brings.
  const state = document.getElementById("live-state");
  unfollow = follow(
    (event) => {
      event.received = Date.now();
      session.recent.unshift(event);
      session.recent.length = Math.min(session.recent.length, 200);
      for (const fn of session.listeners) fn(event);
    },
    (up) => {
      state.textContent = up ? "live" : "offline";
      state.classList.toggle("on", up);
    },
  );
  await route();
}

let leave = null;

async function route() {
  if (!token()) return;
  const [, name = session.admin ? "fabric" : "vms", ...rest] = location.hash.split("/");
  const view = ROUTES[name] && (name !== "fabric" || session.admin) ? ROUTES[name] : ROUTES.vms;
  if (leave) leave();
  leave = null;
  const root = document.getElementById("view");
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  root.replaceChildren(h("p", { class: "loading", text: "Loading…" }));
  try {
    leave = await view(root, ui, rest.map(decodeURIComponent));
  } catch (error) {
    root.replaceChildren(h("p", { class: "error", role: "alert", text: error.message }));
    if (error instanceof ApiError && error.status === 401) logout();
  }
  const heading = root.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
    document.title = `${heading.textContent} · cloud-engine`;
  }
  // bench/ui.py reads when the first view was ready to use.
  if (!performance.getEntriesByName("ce-view-ready").length) performance.mark("ce-view-ready");
}

document.getElementById("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = document.getElementById("token").value.trim();
  if (!value) {
    document.getElementById("login-error").textContent = "Enter a token.";
    return;
  }
  setToken(null); // forget the role of any token before
  setToken(value);
  document.getElementById("token").value = "";
  start();
});
document.getElementById("logout").addEventListener("click", logout);
window.addEventListener("hashchange", route);

if (token()) start();
else showLogin();
