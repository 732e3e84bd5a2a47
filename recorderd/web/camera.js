// One camera: the player, the day bar of the chosen day, the day picker limited to days with
// footage ("day N of M available"), the wall clock of the frame on screen, and the clip panel.
// Today's bar reaches now and grows; "Live" follows the newest footage.

import { api, enc } from "./api.js";
import { ClipPanel } from "./clips.js";
import { DayBar } from "./daybar.js";
import { Player } from "./player.js";
import { ZONE, date, dateTime, dayBounds, dayKey, dayStart, iso, time, utc } from "./fmt.js";

const TIMELINE_REFRESH_MS = 10_000;

export async function showCamera(root, cameraId, { session, say, stateBadge, signal }) {
  const camera = await api(`/cameras/${enc(cameraId)}`, { signal });
  const view = document.getElementById("tpl-camera").content.cloneNode(true).firstElementChild;
  root.replaceChildren(view);
  document.title = `${camera.name || camera.camera_id} · recorderd`;
  view.querySelector("#cam-title").textContent = camera.name || camera.camera_id;
  const badge = view.querySelector("#cam-state");
  stateBadge(badge, camera.state, camera.hint);

  const video = view.querySelector("#video");
  const clock = view.querySelector("#clock");
  const daySelect = view.querySelector("#day-select");
  const dayInfo = view.querySelector("#day-info");
  const playBtn = view.querySelector("#play");
  const speed = view.querySelector("#speed");
  const liveBtn = view.querySelector("#live");
  const modeNote = view.querySelector("#mode-note");
  const backToDay = view.querySelector("#back-to-day");

  const player = new Player(video, { onFragments: () => {}, onError: (err) => say(err.message, "error") });
  const bar = new DayBar(view.querySelector("#daybar"), {
    onSeek: (ms) => seek(ms),
    onSelect: (a, b) => { clips.setSelection(a, b); say(`selected ${time(a)} – ${time(b)} for a clip`, "ok"); },
  });
  const clips = new ClipPanel(view.querySelector("#clips"), {
    camera, canEdit: session.clips, player, bar, say,
    onPreview: (a, b) => preview(a, b, "Previewing the selection"),
    onPlayClip: (c) => preview(Date.parse(c.start), Date.parse(c.end), `Playing clip "${c.name}"`),
  });

  let days = [];
  let day = null;  // {start, end, key}
  let mode = "day";  // or "preview"
  let timer = null;

  const stop = () => { clearInterval(timer); player.destroy(); };
  signal.addEventListener("abort", stop, { once: true });

  // ------------------------------------------------------------------ days

  async function loadDays() {
    const doc = await api(`/cameras/${enc(cameraId)}/days?tz=${enc(ZONE)}`, { signal });
    days = doc.days;
    const today = dayKey(Date.now());
    const opts = days.map((d) => new Option(`${date(dayStart(d.date))}${d.date === today ? " (today)" : ""}`, d.date));
    daySelect.replaceChildren(...opts);
    daySelect.disabled = !days.length;
  }

  function describeDay() {
    const i = days.findIndex((d) => d.date === day.key);
    const plan = camera.plan ? `${camera.plan} plan, ` : "";
    const keep = `${plan}${camera.retention_days}-day retention`;
    dayInfo.replaceChildren();
    if (i < 0) { dayInfo.textContent = `No footage on this day (${keep}).`; return; }
    dayInfo.append(`Day ${i + 1} of ${days.length} available (${keep})`);
    const oldest = days[0];
    if (oldest?.expires_from) {
      const ms = Date.parse(oldest.expires_from);
      const t = document.createElement("time");
      t.dateTime = oldest.expires_from;
      t.title = utc(ms);
      t.textContent = dateTime(ms);
      dayInfo.append(" · the oldest day starts expiring ", t);
    }
    view.querySelector("#prev-day").disabled = i <= 0;
    view.querySelector("#next-day").disabled = i < 0 || i >= days.length - 1;
  }

  async function openDay(key, { startWall = null } = {}) {
    const start = dayStart(key);
    const [, end] = dayBounds(start);
    day = { key, start, end };
    daySelect.value = key;
    history.replaceState(null, "", `/cameras/${enc(cameraId)}?day=${key}`);
    bar.setDay(start, end);
    describeDay();
    await refreshTimeline();
    await play(`/api/v1/cameras/${enc(cameraId)}/playlist.m3u8?from=${enc(iso(start))}&to=${enc(iso(end))}`, startWall);
    setMode("day");
  }

  async function refreshTimeline() {
    const now = Date.now();
    const doc = await api(`/cameras/${enc(cameraId)}/timeline?from=${enc(iso(day.start))}&to=${enc(iso(Math.min(day.end, now + 1000)))}`, { signal });
    const runs = doc.runs.map((r) => ({ start: Date.parse(r.start), end: Date.parse(r.end) }));
    bar.setRuns(runs, day.end > now ? now : null);
    bar.el.dataset.gaps = String(doc.gaps.length);
    bar.el.dataset.loaded = "1";
  }

  async function play(url, startWall) {
    video.dataset.ready = "0";
    video.dataset.playlist = url;
    try {
      await player.load(url, { startWall });
    } catch (err) {
      say(err.status === 422 || err.status === 404 ? "no footage to play here" : err.message, "error");
      return;
    }
    const edge = player.liveEdge();
    liveBtn.hidden = !player.live;
    video.dataset.ready = "1";
    if (!edge) say("no footage to play on this day", "error");
  }

  function setMode(m, note = "") {
    mode = m;
    modeNote.textContent = note;
    backToDay.hidden = m === "day";
  }

  async function preview(a, b, note) {
    const [s] = dayBounds(a);
    if (dayKey(s) !== day.key) await openDayQuiet(dayKey(s));
    bar.setSelection(a, b);
    setMode("preview", `${note}: ${time(a)} – ${time(b)}`);
    await play(`/api/v1/cameras/${enc(cameraId)}/playlist.m3u8?from=${enc(iso(a))}&to=${enc(iso(b))}`, null);
    video.play().catch(() => {});
  }

  async function openDayQuiet(key) {
    day = { key, start: dayStart(key), end: dayBounds(dayStart(key))[1] };
    daySelect.value = key;
    bar.setDay(day.start, day.end);
    describeDay();
    await refreshTimeline();
  }

  // ------------------------------------------------------------------ seeking and the clock

  async function seek(ms) {
    if (mode !== "day") await openDay(day.key, { startWall: ms });
    const pos = player.seekWall(ms);
    if (!pos) { say(`no footage at or after ${time(ms)} on this day`, "error"); return; }
    if (!pos.exact) say(`no footage at ${time(ms)}; showing the next recorded moment, ${time(pos.frag.programDateTime)}`, "ok");
    bar.setCursor(pos.exact ? ms : pos.frag.programDateTime);
  }

  function tick() {
    const ms = player.wallTime();
    if (ms === null) {
      clock.textContent = "--:--:--";
      clock.removeAttribute("data-epoch-ms");
      clock.title = "";
    } else {
      clock.textContent = time(ms);
      clock.dataset.epochMs = String(Math.round(ms));
      clock.dateTime = iso(ms);
      clock.title = `${date(ms)} · ${utc(ms)}`;
      if (mode === "day") bar.setCursor(ms);
    }
    playBtn.textContent = video.paused ? "Play" : "Pause";
    playBtn.setAttribute("aria-pressed", String(!video.paused));
  }

  video.addEventListener("timeupdate", tick);
  video.addEventListener("seeked", tick);
  video.addEventListener("loadeddata", () => { video.dataset.frame = "1"; tick(); });
  video.addEventListener("play", tick);
  video.addEventListener("pause", tick);
  playBtn.addEventListener("click", () => { if (video.paused) video.play().catch((e) => say(e.message, "error")); else video.pause(); });
  speed.addEventListener("change", () => { video.playbackRate = Number(speed.value); });
  video.addEventListener("ratechange", () => { speed.value = String(video.playbackRate); });
  liveBtn.addEventListener("click", async () => {
    const today = dayKey(Date.now());
    if (day.key !== today || mode !== "day") await openDay(today);
    player.goLive();
    video.play().catch(() => {});
  });
  backToDay.addEventListener("click", () => openDay(day.key));
  daySelect.addEventListener("change", () => openDay(daySelect.value));
  view.querySelector("#zoom-in").addEventListener("click", () => bar.zoom(0.25));
  view.querySelector("#zoom-out").addEventListener("click", () => bar.zoom(4));
  view.querySelector("#zoom-fit").addEventListener("click", () => bar.fit());
  view.querySelector("#zoom-day").addEventListener("click", () => bar.setView(bar.start, bar.end));
  view.querySelector("#prev-day").addEventListener("click", () => step(-1));
  view.querySelector("#next-day").addEventListener("click", () => step(1));
  view.querySelector("#fullscreen").addEventListener("click", () => {
    const box = view.querySelector(".player");
    if (document.fullscreenElement) document.exitFullscreen(); else box.requestFullscreen?.().catch(() => {});
  });

  function step(d) {
    const i = days.findIndex((x) => x.date === day.key);
    const next = days[i + d];
    if (next) openDay(next.date);
  }

  // ------------------------------------------------------------------ start

  await loadDays();
  const wanted = new URLSearchParams(location.search).get("day");
  const today = dayKey(Date.now());
  const key = days.some((d) => d.date === wanted) ? wanted : (days.length ? days[days.length - 1].date : today);
  await openDay(key);
  clips.refresh().catch((err) => say(err.message, "error"));
  timer = setInterval(async () => {
    try {
      const cam = await api(`/cameras/${enc(cameraId)}`, { signal });
      stateBadge(badge, cam.state, cam.hint);
      if (day && day.end > Date.now() - 60_000 && mode === "day") await refreshTimeline();
    } catch { /* the next tick tries again; errors show on actions */ }
  }, TIMELINE_REFRESH_MS);
  return { player, bar, stop };
}
