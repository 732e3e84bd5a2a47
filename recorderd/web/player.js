// The <video> element fed by hls.js (or the browser's own HLS where hls.js cannot run), and the map
// between the media timeline and wall-clock time. The playlist's EXT-X-PROGRAM-DATE-TIME tags come
// from the index, so a fragment's wall time plus the offset into it is the wall time of the frame.

const Hls = window.Hls;

export class Player {
  constructor(video, { onFragments = () => {}, onError = () => {} } = {}) {
    this.video = video;
    this.onFragments = onFragments;
    this.onError = onError;
    this.frags = [];  // {start (media s), duration (s), programDateTime (ms)}, in playlist order
    this.hls = null;
    this.live = false;
    this.ended = false;
    this._nativeTimer = null;
    this._url = null;
  }

  /** hls.js where Media Source Extensions exist; else the browser's own HLS (Safari on iOS).
   *  localStorage["recorderd.player"] = "native" forces the latter (the tests use it). */
  static usesHlsJs() {
    let forced = null;
    try { forced = localStorage.getItem("recorderd.player"); } catch { /* storage disabled */ }
    return forced !== "native" && Boolean(Hls && Hls.isSupported());
  }

  /** Load a playlist; resolves once its fragments are known (the first frame may still be coming). */
  load(url, { startWall = null } = {}) {
    this.destroy();
    this._url = url;
    return new Promise((resolve, reject) => {
      let settled = false;
      const done = (err) => {
        if (settled) return;
        settled = true;
        if (err) reject(err); else resolve();
      };
      if (Player.usesHlsJs()) {
        const hls = new Hls({
          enableWorker: true,
          backBufferLength: 90,
          maxBufferLength: 30,
          liveDurationInfinity: false,
          // an EVENT playlist of a day: start where asked, else a few seconds behind now
          autoStartLoad: false,  // started once the playlist says where (startWall) the viewer wants
          manifestLoadingMaxRetry: 2,
          fragLoadingMaxRetry: 4,
        });
        this.hls = hls;
        hls.on(Hls.Events.LEVEL_LOADED, (_e, data) => {
          this.frags = data.details.fragments;
          this.live = data.details.live;
          this.ended = !data.details.live;
          this.onFragments(this.frags);
          if (!settled && startWall !== null) {
            const pos = this.positionOf(startWall);
            if (pos !== null) hls.startLoad(pos.time);
          } else if (!settled) {
            hls.startLoad(this.live ? -1 : 0);
          }
          done();
        });
        hls.on(Hls.Events.ERROR, (_e, data) => {
          if (!data.fatal) return;
          if (data.type === Hls.ErrorTypes.MEDIA_ERROR) { hls.recoverMediaError(); return; }
          const status = data.response?.code;
          const err = new Error(status ? `the playlist could not be loaded (HTTP ${status})` : `playback failed (${data.details})`);
          err.status = status;
          this.onError(err);
          done(err);
        });
        hls.attachMedia(this.video);
        hls.loadSource(url);
      } else if (this.video.canPlayType("application/vnd.apple.mpegurl")) {
        this._loadNative(url, startWall).then(() => done(), done);
      } else {
        done(new Error("this browser cannot play HLS (no Media Source Extensions and no native HLS)"));
      }
    });
  }

  async _loadNative(url, startWall) {
    await this._refreshNative(url);
    this.video.src = url;
    if (startWall !== null) {
      const pos = this.positionOf(startWall);
      if (pos) this.video.addEventListener("loadedmetadata", () => { this.video.currentTime = pos.time; }, { once: true });
    }
    if (this.live) this._nativeTimer = setInterval(() => this._refreshNative(url).catch(() => {}), 8000);
  }

  async _refreshNative(url) {
    const resp = await fetch(url, { credentials: "same-origin" });
    if (!resp.ok) throw new Error(`the playlist could not be loaded (HTTP ${resp.status})`);
    const parsed = parsePlaylist(await resp.text());
    this.frags = parsed.fragments;
    this.live = !parsed.ended;
    this.ended = parsed.ended;
    this.onFragments(this.frags);
  }

  /** The fragment holding wall time ms, or the first after it (a gap): {time, frag, exact}. */
  positionOf(ms) {
    const frags = this.frags;
    if (!frags.length) return null;
    let lo = 0, hi = frags.length - 1;
    while (lo < hi) {  // last fragment starting at or before ms
      const mid = (lo + hi + 1) >> 1;
      if (frags[mid].programDateTime <= ms) lo = mid; else hi = mid - 1;
    }
    const f = frags[lo];
    if (f.programDateTime <= ms && ms < f.programDateTime + f.duration * 1000) {
      return { time: f.start + (ms - f.programDateTime) / 1000, frag: f, exact: true };
    }
    const next = f.programDateTime > ms ? f : frags[lo + 1];
    if (!next) return null;  // after the last footage
    return { time: next.start + 0.001, frag: next, exact: false };
  }

  /** Wall time (ms) of the frame on screen, or null when it is not in a known fragment. */
  wallTime() {
    const t = this.video.currentTime;
    const frags = this.frags;
    if (!frags.length) return null;
    let lo = 0, hi = frags.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (frags[mid].start <= t) lo = mid; else hi = mid - 1;
    }
    const f = frags[lo];
    if (f.programDateTime === null || f.programDateTime === undefined) return null;
    if (t < f.start - 0.5 || t > f.start + f.duration + 0.5) return null;
    return f.programDateTime + (t - f.start) * 1000;
  }

  /** Show the frame at wall time ms; in a gap, the first frame after it. Returns where it went. */
  seekWall(ms) {
    const pos = this.positionOf(ms);
    if (!pos) return null;
    if (this.hls && !this.hls.media) return null;
    this.video.currentTime = pos.time;
    return pos;
  }

  /** The newest footage listed (a live playlist grows; this is its end). */
  liveEdge() {
    const f = this.frags[this.frags.length - 1];
    return f ? { time: f.start + f.duration, wall: f.programDateTime + f.duration * 1000 } : null;
  }

  goLive() {
    if (this.hls && this.hls.liveSyncPosition) { this.video.currentTime = this.hls.liveSyncPosition; return; }
    const edge = this.liveEdge();
    if (edge) this.video.currentTime = Math.max(0, edge.time - 6);
  }

  destroy() {
    if (this._nativeTimer) clearInterval(this._nativeTimer);
    this._nativeTimer = null;
    if (this.hls) { this.hls.destroy(); this.hls = null; }
    this.video.removeAttribute("src");
    this.video.load();
    this.frags = [];
  }
}

/** A media playlist's segments with media start, duration and wall time (for native HLS). */
export function parsePlaylist(text) {
  const fragments = [];
  let pdt = null, dur = null, start = 0, ended = false;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("#EXT-X-PROGRAM-DATE-TIME:")) pdt = Date.parse(line.slice(25));
    else if (line.startsWith("#EXTINF:")) dur = parseFloat(line.slice(8));
    else if (line === "#EXT-X-ENDLIST") ended = true;
    else if (line && !line.startsWith("#") && dur !== null) {
      fragments.push({ start, duration: dur, programDateTime: pdt });
      start += dur;
      if (pdt !== null) pdt += dur * 1000;
      dur = null;
    }
  }
  return { fragments, ended };
}
