// Times in the viewer's own time zone (UTC on hover via title), sizes and durations people read.

export const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
const dateFmt = new Intl.DateTimeFormat(undefined, { weekday: "short", year: "numeric", month: "short", day: "numeric" });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });

export const time = (ms) => timeFmt.format(ms);
export const date = (ms) => dateFmt.format(ms);
export const dateTime = (ms) => dateTimeFmt.format(ms);
export const utc = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z").replace("T", " ") + " UTC";

/** A <time> element: local text, ISO datetime attribute, UTC on hover. */
export function timeEl(ms, text = dateTime(ms)) {
  const el = document.createElement("time");
  el.dateTime = new Date(ms).toISOString();
  el.title = utc(ms);
  el.textContent = text;
  return el;
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB", "PB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

export function duration(s) {
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m) return `${m} min ${String(sec).padStart(2, "0")} s`;
  return `${sec} s`;
}

export function ago(ms, now = Date.now()) {
  const s = Math.round((now - ms) / 1000);
  if (s < 5) return "just now";
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

/** Local midnight of the day holding ms, and of the next day (DST-safe: by calendar, not by 24 h). */
export function dayBounds(ms) {
  const d = new Date(ms);
  const start = new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  const end = new Date(d.getFullYear(), d.getMonth(), d.getDate() + 1).getTime();
  return [start, end];
}

/** "2026-11-22" (the API's day key, in the viewer's zone) to local midnight. */
export function dayStart(key) {
  const [y, m, d] = key.split("-").map(Number);
  return new Date(y, m - 1, d).getTime();
}

export function dayKey(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

export const iso = (ms) => new Date(ms).toISOString();

/** For <input type="datetime-local" step="1">: local wall time without a zone. */
export function localInput(ms) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, "0");
  return `${dayKey(ms)}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function parseLocalInput(text) {
  const ms = new Date(text).getTime();  // datetime-local text without a zone is local time
  return Number.isFinite(ms) ? ms : null;
}
