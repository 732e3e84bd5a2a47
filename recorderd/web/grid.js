// The camera grid: one tile per camera the sign-in may see (state, end of the last segment, disk used,
// plan), refreshed by itself; double click (or Enter, or the name's link) opens a camera. Above it,
// the footage disk against the 80/90/95 % marks, and what each tenant and camera takes of it.

import { api } from "./api.js";
import { ago, bytes, timeEl } from "./fmt.js";

const REFRESH_MS = 5_000;

export async function showGrid(root, { go, say, stateBadge, signal }) {
  const view = document.getElementById("tpl-grid").content.cloneNode(true).firstElementChild;
  root.replaceChildren(view);
  document.title = "Cameras · recorderd";
  const grid = view.querySelector("#grid");
  const tiles = new Map();

  function tile(cam) {
    let el = tiles.get(cam.camera_id);
    if (!el) {
      el = document.getElementById("tpl-tile").content.cloneNode(true).firstElementChild;
      el.dataset.cameraId = cam.camera_id;
      const link = el.querySelector(".tile-name");
      link.href = `/cameras/${encodeURIComponent(cam.camera_id)}`;
      link.addEventListener("click", (e) => { e.preventDefault(); go(link.getAttribute("href")); });
      el.addEventListener("dblclick", () => go(link.getAttribute("href")));
      el.addEventListener("keydown", (e) => { if (e.key === "Enter" && e.target === el) go(link.getAttribute("href")); });
      tiles.set(cam.camera_id, el);
    }
    el.querySelector(".tile-name").textContent = cam.name || cam.camera_id;
    el.querySelector(".tile-id").textContent = cam.camera_id;
    stateBadge(el.querySelector(".state"), cam.state, cam.hint);
    el.dataset.state = cam.state;
    const last = el.querySelector(".tile-last");
    if (cam.last_segment_end) {
      const ms = Date.parse(cam.last_segment_end);
      last.replaceChildren("last footage ", timeEl(ms, ago(ms)));
    } else {
      last.textContent = "no footage yet";
    }
    el.querySelector(".tile-disk").textContent = cam.disk_usage_bytes === null ? "disk use not surveyed yet" : `${bytes(cam.disk_usage_bytes)} on disk`;
    el.querySelector(".tile-plan").textContent = cam.plan
      ? `${cam.plan} plan · ${cam.retention_days} days` : `${cam.retention_days} days`;
    el.querySelector(".tile-days").textContent = `${cam.days_available} day${cam.days_available === 1 ? "" : "s"} of footage`;
    return el;
  }

  async function refresh() {
    const [doc, storage] = await Promise.all([api("/cameras", { signal }), api("/storage", { signal }).catch(() => null)]);
    const els = doc.cameras.map(tile);
    if (!els.length) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "No cameras for this sign-in.";
      grid.replaceChildren(p);
    } else {
      grid.replaceChildren(...els);
    }
    if (storage) showStorage(view.querySelector("#storage"), storage);
  }

  await refresh();
  const timer = setInterval(() => refresh().catch((err) => { if (err.name !== "AbortError") say(err.message, "error"); }), REFRESH_MS);
  signal.addEventListener("abort", () => clearInterval(timer), { once: true });
}

function showStorage(box, doc) {
  const v = doc.volume;
  const pct = Math.round(v.used_ratio * 1000) / 10;
  const meter = box.querySelector("#disk-meter");
  meter.style.setProperty("--used", `${Math.min(100, pct)}%`);
  meter.dataset.level = String(v.level);
  meter.setAttribute("aria-valuenow", String(pct));
  meter.setAttribute("aria-valuetext", `${pct} % used`);
  const marks = v.marks.map((m) => `${Math.round(m * 100)} %`).join(" / ");
  const crossed = v.level ? `past the ${Math.round(v.marks[v.level - 1] * 100)} % mark` : `below the ${marks} marks`;
  box.querySelector("#disk-text").textContent =
    `Footage disk ${pct} % used (${bytes(v.used_bytes)} of ${bytes(v.total_bytes)}, ${bytes(v.free_bytes)} free), ${crossed}` +
    (v.read_only ? "; READ-ONLY: nothing is being recorded" : "");
  const rows = [];
  for (const t of doc.tenants) rows.push(row(t.tenant ? `tenant ${t.tenant}` : "no tenant", `${t.cameras} camera${t.cameras === 1 ? "" : "s"}`, t.bytes, t.share, "tenant"));
  for (const c of doc.cameras) rows.push(row(c.name || c.camera_id, c.tenant ? `tenant ${c.tenant}` : "", c.bytes, c.share, "camera"));
  box.querySelector("#storage-rows").replaceChildren(...rows);
}

function row(name, note, n, share, kind) {
  const tr = document.createElement("tr");
  tr.className = kind;
  const cells = [name, note, bytes(n), share === null || share === undefined ? "–" : `${(share * 100).toFixed(1)} %`];
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c;
    tr.append(td);
  }
  return tr;
}
