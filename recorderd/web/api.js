// The page's only way to the daemon: same-origin fetches that carry the session cookie.
// Every failure becomes an ApiError with the API's own sentence, so views can show it as is.

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, credentials: "same-origin", signal, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(`/api/v1${path}`, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "the recorder does not answer (network error)");
  }
  if (resp.status === 204) return null;
  let doc = null;
  try { doc = await resp.json(); } catch { /* not JSON: keep the status */ }
  if (!resp.ok) {
    const err = new ApiError(resp.status, doc?.error || "http_error", doc?.detail || `HTTP ${resp.status}`);
    if (resp.status === 401 && path !== "/session") onUnauthorized(err);
    throw err;
  }
  return doc;
}

export const enc = encodeURIComponent;
