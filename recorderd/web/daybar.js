// The day bar: 00:00 to 24:00 of one local day, recorded runs over gaps, the playhead, "now" on
// today's bar, and a selection for clips. Click seeks; drag selects; the wheel (or + and -) zooms
// around the pointer down to a minute, so a short event can be hit to the second. As a slider it
// takes the keyboard (arrows 10 s, Page Up/Down 10 min, Home/End) and speaks the playhead's time.

import { time } from "./fmt.js";

const DRAG_PX = 5;
const MIN_VIEW_MS = 60_000;
const TICK_STEPS_S = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800];

export class DayBar {
  constructor(el, { onSeek = () => {}, onSelect = () => {} } = {}) {
    this.el = el;
    this.onSeek = onSeek;
    this.onSelect = onSelect;
    this.start = 0;
    this.end = 1;
    this.runs = [];
    this.cursorMs = null;
    this.sel = null;
    this.now = null;
    this.viewStart = 0;
    this.viewEnd = 1;
    el.replaceChildren();
    el.setAttribute("role", "slider");
    el.tabIndex = 0;
    el.setAttribute("aria-label", "Day timeline: choose the time to play");
    this.track = div("track");
    this.runsEl = div("runs");
    this.future = div("future");
    this.selection = div("selection");
    this.selection.hidden = true;
    this.cursor = div("cursor");
    this.track.append(this.runsEl, this.future, this.selection, this.cursor);
    this.ticks = div("ticks");
    el.append(this.track, this.ticks);
    this._bind();
  }

  setDay(start, end) {
    this.start = start;
    this.end = end;
    this.el.setAttribute("aria-valuemin", "0");
    this.el.setAttribute("aria-valuemax", String(Math.round((end - start) / 1000)));
    this.sel = null;
    this.runs = [];
    this.now = null;
    this.setView(start, end);
  }

  /** Show [a, b] of the day (clamped; at least a minute). */
  setView(a, b) {
    const span = Math.min(this.end - this.start, Math.max(MIN_VIEW_MS, b - a));
    const s = Math.max(this.start, Math.min(a, this.end - span));
    this.viewStart = s;
    this.viewEnd = s + span;
    this.el.dataset.viewStart = String(Math.round(this.viewStart));
    this.el.dataset.viewEnd = String(Math.round(this.viewEnd));
    this._draw();
  }

  zoom(factor, centerMs = null) {
    const c = centerMs ?? this.cursorMs ?? (this.viewStart + this.viewEnd) / 2;
    const f = (c - this.viewStart) / (this.viewEnd - this.viewStart);
    const span = (this.viewEnd - this.viewStart) * factor;
    this.setView(c - f * span, c - f * span + span);
  }

  /** Zoom to the recorded runs (the whole day when there are none). */
  fit() {
    if (!this.runs.length) { this.setView(this.start, this.end); return; }
    const a = this.runs[0].start, b = this.runs[this.runs.length - 1].end;
    const pad = Math.max(10_000, (b - a) * 0.05);
    this.setView(a - pad, b + pad);
  }

  /** runs: [{start, end}] in ms; now: ms of "now" when the day is today (the rest is future). */
  setRuns(runs, now) {
    this.runs = runs;
    this.now = now;
    this._draw();
  }

  setCursor(ms) {
    this.cursorMs = ms;
    if (ms !== null) {
      this.el.setAttribute("aria-valuenow", String(Math.round((ms - this.start) / 1000)));
      this.el.setAttribute("aria-valuetext", time(ms));
    }
    this._drawCursor();
  }

  setSelection(a, b) {
    this.sel = a === null || b === null || b <= a ? null : { a, b };
    this._drawSelection();
  }

  _draw() {
    const frag = document.createDocumentFragment();
    for (const r of this.runs) {
      if (r.end < this.viewStart || r.start > this.viewEnd) continue;
      const el = div("run");
      const left = this._pct(Math.max(r.start, this.viewStart));
      el.style.left = `${left}%`;
      el.style.width = `${Math.max(0.08, this._pct(Math.min(r.end, this.viewEnd)) - left)}%`;
      el.dataset.start = String(r.start);
      el.dataset.end = String(r.end);
      el.title = `recorded ${time(r.start)} – ${time(r.end)}`;
      frag.append(el);
    }
    this.runsEl.replaceChildren(frag);
    const now = this.now;
    if (now !== null && now < this.viewEnd) {
      this.future.hidden = false;
      this.future.style.left = `${Math.max(0, this._pct(now))}%`;
      this.future.title = "not yet recorded";
    } else {
      this.future.hidden = true;
    }
    this._drawTicks();
    this._drawSelection();
    this._drawCursor();
  }

  _drawTicks() {
    const spanS = (this.viewEnd - this.viewStart) / 1000;
    const step = TICK_STEPS_S.find((x) => spanS / x <= 9) ?? 10800;
    const d0 = new Date(this.viewStart);
    const sod = d0.getHours() * 3600 + d0.getMinutes() * 60 + d0.getSeconds();
    const ticks = [];
    // local wall-clock positions (the Date constructor counts calendar seconds, so DST days work)
    for (let n = Math.ceil(sod / step) * step; ticks.length < 14; n += step) {
      const ms = new Date(d0.getFullYear(), d0.getMonth(), d0.getDate(), 0, 0, n).getTime();
      if (ms > this.viewEnd) break;
      const t = div("tick");
      const pct = this._pct(ms);
      t.style.left = `${pct}%`;
      if (pct < 3) t.classList.add("edge-start");
      if (pct > 97) t.classList.add("edge-end");
      const dt = new Date(ms);
      const hm = `${String(dt.getHours()).padStart(2, "0")}:${String(dt.getMinutes()).padStart(2, "0")}`;
      t.textContent = step < 60 ? `${hm}:${String(dt.getSeconds()).padStart(2, "0")}` : hm;
      ticks.push(t);
    }
    this.ticks.replaceChildren(...ticks);
  }

  _drawCursor() {
    const ms = this.cursorMs;
    const visible = ms !== null && ms >= this.viewStart && ms <= this.viewEnd;
    this.cursor.hidden = !visible;
    if (visible) this.cursor.style.left = `${this._pct(ms)}%`;
  }

  _drawSelection() {
    const sel = this.sel;
    if (!sel || sel.b < this.viewStart || sel.a > this.viewEnd) { this.selection.hidden = true; return; }
    this.selection.hidden = false;
    const left = this._pct(Math.max(sel.a, this.viewStart));
    this.selection.style.left = `${left}%`;
    this.selection.style.width = `${this._pct(Math.min(sel.b, this.viewEnd)) - left}%`;
  }

  /** The wall time (ms) under a client x coordinate. */
  msAt(clientX) {
    const box = this.track.getBoundingClientRect();
    const f = Math.min(1, Math.max(0, (clientX - box.left) / box.width));
    return this.viewStart + f * (this.viewEnd - this.viewStart);
  }

  _pct(ms) { return ((ms - this.viewStart) / (this.viewEnd - this.viewStart)) * 100; }

  _bind() {
    let down = null;
    this.el.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      down = { x: e.clientX, ms: this.msAt(e.clientX), dragging: false };
      this.el.setPointerCapture(e.pointerId);
      this.el.focus();
    });
    this.el.addEventListener("pointermove", (e) => {
      if (!down) return;
      if (!down.dragging && Math.abs(e.clientX - down.x) >= DRAG_PX) down.dragging = true;
      if (down.dragging) {
        const ms = this.msAt(e.clientX);
        this.setSelection(Math.min(down.ms, ms), Math.max(down.ms, ms));
      }
    });
    const finish = (e) => {
      if (!down) return;
      const ms = this.msAt(e.clientX);
      if (down.dragging) this.onSelect(Math.min(down.ms, ms), Math.max(down.ms, ms));
      else this.onSeek(ms);
      down = null;
    };
    this.el.addEventListener("pointerup", finish);
    this.el.addEventListener("pointercancel", () => { down = null; });
    this.el.addEventListener("wheel", (e) => {
      e.preventDefault();
      this.zoom(e.deltaY < 0 ? 0.5 : 2, this.msAt(e.clientX));
    }, { passive: false });
    this.el.addEventListener("keydown", (e) => {
      if (e.key === "+" || e.key === "=") { e.preventDefault(); this.zoom(0.5); return; }
      if (e.key === "-") { e.preventDefault(); this.zoom(2); return; }
      const steps = { ArrowLeft: -10e3, ArrowRight: 10e3, ArrowDown: -10e3, ArrowUp: 10e3, PageDown: -600e3, PageUp: 600e3 };
      const base = this.cursorMs ?? this.start;
      let target = null;
      if (e.key in steps) target = base + steps[e.key];
      else if (e.key === "Home") target = this.runs[0]?.start ?? this.start;
      else if (e.key === "End") target = this.runs[this.runs.length - 1]?.end - 5000 || this.end;
      if (target === null) return;
      e.preventDefault();
      this.onSeek(Math.min(this.end, Math.max(this.start, target)));
    });
  }
}

function div(cls) {
  const el = document.createElement("div");
  el.className = cls;
  return el;
}
