// Clips of one camera: choose a period (drag on the day bar, the playhead buttons or typed times),
// preview it, save it with a name, and list, rename, download or delete saved clips. The plan's
// limit is shown before it is reached; the API's 409 is shown as its own sentence.

import { api, enc, ApiError } from "./api.js";
import { bytes, duration, iso, localInput, parseLocalInput, timeEl, dateTime } from "./fmt.js";

export class ClipPanel {
  constructor(root, { camera, canEdit, player, bar, onPreview, onPlayClip, say }) {
    this.root = root;
    this.camera = camera;
    this.canEdit = canEdit;
    this.player = player;
    this.bar = bar;
    this.onPreview = onPreview;
    this.onPlayClip = onPlayClip;
    this.say = say;
    this.clips = [];
    this.from = root.querySelector("#clip-from");
    this.to = root.querySelector("#clip-to");
    this.name = root.querySelector("#clip-name");
    this.usage = root.querySelector("#clip-usage");
    this.list = root.querySelector("#clip-list");
    this.saveBtn = root.querySelector("#clip-save");
    root.querySelector("#clip-mark-in").addEventListener("click", () => this._mark(this.from));
    root.querySelector("#clip-mark-out").addEventListener("click", () => this._mark(this.to));
    root.querySelector("#clip-preview").addEventListener("click", () => this._preview());
    root.querySelector("#clip-form").addEventListener("submit", (e) => { e.preventDefault(); this._save(); });
    for (const input of [this.from, this.to]) input.addEventListener("change", () => this._showSelection());
    if (!canEdit) {
      this.saveBtn.disabled = true;
      this.saveBtn.title = "this sign-in may watch but not save clips";
    }
  }

  setSelection(a, b) {
    this.from.value = localInput(a);
    this.to.value = localInput(b);
    this._showSelection();
  }

  period() {
    const a = parseLocalInput(this.from.value), b = parseLocalInput(this.to.value);
    if (a === null || b === null) return { error: "choose a start and an end" };
    if (b <= a) return { error: "the end must be after the start" };
    return { from: a, to: b };
  }

  _mark(input) {
    const ms = this.player.wallTime();
    if (ms === null) { this.say("no frame on screen to take the time from", "error"); return; }
    input.value = localInput(ms);
    this._showSelection();
  }

  _showSelection() {
    const p = this.period();
    this.bar.setSelection(p.error ? null : p.from, p.error ? null : p.to);
  }

  _preview() {
    const p = this.period();
    if (p.error) { this.say(p.error, "error"); return; }
    this.onPreview(p.from, p.to);
  }

  async _save() {
    const p = this.period();
    if (p.error) { this.say(p.error, "error"); return; }
    const name = this.name.value.trim() || `${this.camera.name || this.camera.camera_id} ${dateTime(p.from)}`;
    this.saveBtn.disabled = true;
    this.say("saving the clip…", "busy");
    try {
      const clip = await api("/clips", { method: "POST", body: { camera_id: this.camera.camera_id, from: iso(p.from), to: iso(p.to), name } });
      const gaps = (clip.gaps || []).length;
      this.say(`saved "${clip.name}" (${duration(clip.duration_seconds)}, ${bytes(clip.size_bytes)})` +
        (gaps ? `; ${gaps} part(s) of the period had no footage` : ""), "ok");
      this.name.value = "";
      await this.refresh();
    } catch (err) {
      this.say(clipError(err), "error");
      await this.refresh().catch(() => {});
    } finally {
      this.saveBtn.disabled = !this.canEdit || this._full();
    }
  }

  _full() {
    const limit = this.camera.clips_limit;
    return limit !== null && limit !== undefined && this.clips.length >= limit;
  }

  async refresh() {
    const doc = await api(`/clips?camera_id=${enc(this.camera.camera_id)}`);
    this.clips = doc.clips;
    this._render();
  }

  _render() {
    const limit = this.camera.clips_limit;
    const used = this.clips.length;
    const plan = this.camera.plan ? ` (${this.camera.plan} plan)` : "";
    this.usage.textContent = limit === null || limit === undefined
      ? `${used} clip${used === 1 ? "" : "s"} saved${plan}, no limit`
      : `${used} of ${limit} clips used${plan}` + (used >= limit ? ": delete one to save another" : used >= limit - 1 ? ": one left" : "");
    this.usage.classList.toggle("warn", limit !== null && limit !== undefined && used >= limit - 1);
    this.saveBtn.disabled = !this.canEdit || this._full();
    const rows = this.clips.map((c) => this._row(c));
    if (!rows.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No clips saved for this camera yet.";
      rows.push(li);
    }
    this.list.replaceChildren(...rows);
  }

  _row(c) {
    const li = document.createElement("li");
    li.className = "clip";
    li.dataset.clipId = String(c.id);
    const start = Date.parse(c.start);
    const title = document.createElement("span");
    title.className = "clip-name";
    title.textContent = c.name;
    const meta = document.createElement("span");
    meta.className = "clip-meta";
    meta.append(timeEl(start), ` · ${duration(c.duration_seconds)} · `);
    const size = document.createElement("span");
    size.className = "clip-size";
    size.textContent = bytes(c.size_bytes);
    meta.append(size);
    const actions = document.createElement("span");
    actions.className = "clip-actions";
    const play = button("Play", () => this.onPlayClip(c), `Play clip ${c.name}`);
    const dl = document.createElement("a");
    dl.className = "button";
    dl.textContent = "Download";
    dl.href = c.url;
    dl.setAttribute("download", "");
    dl.setAttribute("aria-label", `Download clip ${c.name}`);
    actions.append(play, dl);
    if (this.canEdit) {
      actions.append(button("Rename", () => this._rename(c), `Rename clip ${c.name}`),
        button("Delete", () => this._delete(c), `Delete clip ${c.name}`, "danger"));
    }
    li.append(title, meta, actions);
    return li;
  }

  async _rename(c) {
    const name = window.prompt("New name for the clip", c.name);
    if (name === null || !name.trim() || name.trim() === c.name) return;
    try {
      await api(`/clips/${c.id}`, { method: "PATCH", body: { name: name.trim() } });
      this.say(`renamed to "${name.trim()}"`, "ok");
      await this.refresh();
    } catch (err) { this.say(clipError(err), "error"); }
  }

  async _delete(c) {
    if (!window.confirm(`Delete the clip "${c.name}"? Its footage goes back to normal retention.`)) return;
    try {
      await api(`/clips/${c.id}`, { method: "DELETE" });
      this.say(`deleted "${c.name}"`, "ok");
      await this.refresh();
    } catch (err) { this.say(clipError(err), "error"); }
  }
}

export function clipError(err) {
  if (!(err instanceof ApiError)) return String(err.message || err);
  switch (err.code) {
    case "clip_limit": return `Clip limit reached: ${err.message}`;
    case "no_footage": return "There is no footage in that period: choose a part of the bar that is recorded.";
    case "too_many_cuts": return "The recorder is busy cutting other clips; try again in a few seconds.";
    case "forbidden": return "This sign-in may watch but not change clips.";
    default: return err.message;
  }
}

function button(text, onClick, label, cls = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (cls) b.className = cls;
  if (label) b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}
