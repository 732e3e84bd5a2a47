// The page's shell: sign-in, the header, and a tiny router between the grid (/) and one camera
// (/cameras/<id>), so a camera's URL can be bookmarked and shared. Messages go to one live region.

import { api, setUnauthorizedHandler } from "./api.js";
import { showCamera } from "./camera.js";
import { showGrid } from "./grid.js";

const main = document.getElementById("main");
const status = document.getElementById("status");
let session = null;
let current = null;  // AbortController of the view on screen

const STATES = {
  recording: "Recording", starting: "Starting", backoff: "Retrying", stalled: "Stalled",
  unreachable: "Unreachable", unauthorized: "Login refused", not_found: "Stream not found", unsupported: "Unsupported codec",
  disabled: "Disabled", unknown: "Unknown", error: "Error", storage_missing: "Disk missing",
};

export function stateBadge(el, state, hint) {
  el.textContent = STATES[state] || state;
  el.dataset.state = state;
  el.title = hint || "";  // why it does not record, and what to fix
  el.className = `state state-${/^[a-z_]+$/.test(state) ? state : "unknown"}`;
}

function say(text, kind = "ok") {
  status.textContent = text;
  status.dataset.kind = kind;
  status.hidden = !text;
}

function go(path) {
  history.pushState(null, "", path);
  route();
}

async function route() {
  current?.abort();
  current = new AbortController();
  const signal = current.signal;
  say("");
  if (!session) {
    try { session = await api("/session"); } catch (err) { showSignIn(err.message); return; }
    if (!session.signed_in) { session = null; showSignIn(); return; }
  }
  document.getElementById("who").textContent = `signed in as ${session.name}`;
  document.getElementById("signout").hidden = session.name === "anonymous";
  document.getElementById("nav-cameras").setAttribute("aria-current", location.pathname === "/" ? "page" : "false");
  const m = location.pathname.match(/^\/cameras\/([^/]+)$/);
  try {
    if (m) await showCamera(main, decodeURIComponent(m[1]), { session, say, stateBadge, signal });
    else await showGrid(main, { go, say, stateBadge, signal });
  } catch (err) {
    if (err.name === "AbortError" || signal.aborted) return;
    if (err.status === 401) return;  // the sign-in form is up
    main.replaceChildren(document.getElementById("tpl-error").content.cloneNode(true));
    main.querySelector(".error-text").textContent = err.status === 404 ? "No such camera for this sign-in." : err.message;
  }
}

function showSignIn(message = "") {
  current?.abort();
  session = null;
  document.getElementById("who").textContent = "";
  document.getElementById("signout").hidden = true;
  main.replaceChildren(document.getElementById("tpl-signin").content.cloneNode(true));
  document.title = "Sign in · recorderd";
  const form = main.querySelector("#signin-form");
  const err = main.querySelector("#signin-error");
  err.textContent = message;
  const input = main.querySelector("#token");
  input.focus();
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.textContent = "";
    try {
      session = await api("/session", { method: "POST", body: { token: input.value } });
      input.value = "";
      route();
    } catch (ex) {
      err.textContent = ex.status === 401 ? "That token is not valid." : ex.message;
      input.select();
    }
  });
}

setUnauthorizedHandler(() => showSignIn("Your session ended (signed out, expired, or the token changed). Sign in again."));
document.getElementById("signout").addEventListener("click", async () => {
  await api("/session", { method: "DELETE" }).catch(() => {});
  showSignIn("Signed out.");
});
document.getElementById("nav-cameras").addEventListener("click", (e) => { e.preventDefault(); go("/"); });
window.addEventListener("popstate", route);
route();
