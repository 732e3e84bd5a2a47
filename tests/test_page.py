"""The web page in a real browser: Debian's chromium, driven headless by Playwright, against one real
daemon per module recording real RTSP cameras into a real PostgreSQL.

Each view is screenshotted into ``test-artifacts/page/`` (kept by CI runs, ignored by git): look at them.
Every page is also watched for console errors and failed requests; a test fails on any.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from fixtures_cam import TestCam, free_port
from util import REPO, DaemonProc, camera_doc, write_api_config

pytestmark = pytest.mark.integration

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("RECORDERD_ARTIFACTS", REPO / "test-artifacts")) / "page"
TOKENS = {"ops": "page-ops-" + "o" * 32, "t1": "page-tenant-one-" + "a" * 24, "t2": "page-tenant-two-" + "b" * 24}
# what the probe on these machines found chromium needs as root in a closed network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]


class Site:
    def __init__(self, port: int, daemon: DaemonProc, dsn: str, cams: dict[str, TestCam]) -> None:
        self.port, self.daemon, self.dsn, self.cams = port, daemon, dsn, cams
        self.base = f"http://127.0.0.1:{port}"

    async def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """``rows`` from a test body: Playwright's sync API already runs a loop in this thread."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.rows(sql, *args)).result()


@pytest.fixture(scope="module")
def site(pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("page")
    dsn = pg_cluster.create_database("page_" + uuid.uuid4().hex[:8])
    cams = {"gate": TestCam(fps=10, gop=10, audio="aac"), "yard": TestCam(fps=10, gop=10),
            "shop": TestCam(fps=10, gop=10)}
    for cam in cams.values():
        cam.start(timeout=30)  # once per module: a loaded box is given time
    port = free_port()
    root = tmp / "rec"
    cfg = write_api_config(tmp / "cameras.yaml", root, [
        camera_doc("gate", cams["gate"].url, name="Front gate", tenant="t1", plan="basic"),
        camera_doc("yard", cams["yard"].url, name="Yard", tenant="t1", plan="tiny"),
        camera_doc("shop", cams["shop"].url, name="Shop floor", tenant="t2")],
        dsn=dsn, port=port, tokens=TOKENS, plans={"tiny": {"retention_days": 7, "max_clips": 2}})
    d = DaemonProc(cfg, root, tmp / "daemon.log").start()
    s = Site(port, d, dsn, cams)
    try:
        async def indexed(camera_id: str, n: int) -> bool:
            try:
                rows = await s.rows("SELECT count(*) AS n FROM segments WHERE camera_id = $1", camera_id)
            except (OSError, asyncpg.PostgresError):
                return False
            return bool(rows[0]["n"] >= n)

        async def until(camera_id: str, n: int, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while not await indexed(camera_id, n):
                assert time.monotonic() < deadline, f"{camera_id} has no {n} indexed segments after {timeout} s"
                await asyncio.sleep(0.3)

        async def ready() -> None:
            await until("gate", 3, 60)
            # an outage of the gate camera: the day bar must show its gap
            cams["gate"].stop()
            await asyncio.sleep(6)
            cams["gate"].start()
            await until("gate", 7, 60)
            await until("yard", 3, 30)

        asyncio.run(ready())
        yield s
    finally:
        d.stop()
        for cam in cams.values():
            cam.stop()
    log = d.log_path.read_text()
    for tok in TOKENS.values():
        assert tok not in log


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/test installs it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pw = playwright_sync.sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield b
    b.close()
    pw.stop()


class Tab:
    """A fresh browser context (its own cookies) with console errors and failed requests recorded."""

    def __init__(self, browser: Any, site: Site, tz: str = "Europe/Berlin", width: int = 1280,
                 native_hls: bool = False) -> None:
        self.site = site
        self.ctx = browser.new_context(timezone_id=tz, viewport={"width": width, "height": 900},
                                       accept_downloads=True)
        if native_hls:  # the player's fallback where hls.js cannot run; chromium 156 has its own HLS
            self.ctx.add_init_script("localStorage.setItem('recorderd.player', 'native')")
        self.page = self.ctx.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("requestfailed", self._failed)

    def _failed(self, request: Any) -> None:
        # hls.js aborts a media load it no longer needs (a seek); any other failure is an error
        if "/api/v1/media/" in request.url and "ERR_ABORTED" in str(request.failure):
            return
        self.errors.append(f"request failed: {request.url.split('?')[0]} {request.failure}")

    def open(self, path: str = "/") -> Any:
        self.page.goto(self.site.base + path)
        return self.page

    def sign_in(self, who: str) -> Any:
        page = self.open("/")
        page.fill("#token", TOKENS[who])
        page.click("#signin-form button[type=submit]")
        page.wait_for_selector("#grid .tile")
        return page

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self, *, allow: tuple[str, ...] = ()) -> None:
        errors = [e for e in self.errors if not any(a in e for a in allow)]
        self.ctx.close()
        assert not errors, errors


def wait_js(page: Any, expr: str, timeout: float, what: str = "") -> Any:
    """Poll a page expression until truthy. (``wait_for_function`` evaluates strings with eval, which
    the page's Content-Security-Policy rightly refuses.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expr)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or expr}")
        page.wait_for_timeout(20)


def tile_state(page: Any, camera_id: str) -> str:
    return str(page.get_attribute(f'.tile[data-camera-id="{camera_id}"]', "data-state"))


# --------------------------------------------------------------------------- sign-in and the grid


def test_sign_in_shows_the_tenants_cameras_with_their_state(site: Site, browser: Any) -> None:
    tab = Tab(browser, site)
    page = tab.open("/")
    page.wait_for_selector("#signin-form")
    tab.shot("01-sign-in")
    page.fill("#token", "not-a-token")
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#signin-error:has-text('not valid')")
    assert len(tab.errors) == 1 and "401" in tab.errors[0], tab.errors  # the wrong token's answer only
    tab.errors.clear()
    page = tab.sign_in("t1")
    ids = page.eval_on_selector_all("#grid .tile", "els => els.map(e => e.dataset.cameraId)")
    assert sorted(ids) == ["gate", "yard"]  # not t2's shop
    wait_js(page, "document.querySelectorAll('#grid .tile[data-state=recording]').length === 2", 20)
    page.wait_for_selector("#disk-text:has-text('% used')")
    tab.shot("02-grid")
    cookies = tab.ctx.cookies()
    session = [c for c in cookies if c["name"] == "recorderd_session"]
    assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Strict"
    assert TOKENS["t1"] not in json.dumps(cookies)
    tab.close()


# --------------------------------------------------------------------------- one camera


def parse_playlist(text: str) -> list[tuple[float, float, float]]:
    """(media start s, duration s, wall start epoch s) of each media segment, as a player lays them out."""
    out: list[tuple[float, float, float]] = []
    pos, pdt, dur = 0.0, None, None
    for line in text.splitlines():
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = datetime.fromisoformat(line.split(":", 1)[1].replace("Z", "+00:00")).timestamp()
        elif line.startswith("#EXTINF:"):
            dur = float(line[8:].split(",")[0])
        elif line and not line.startswith("#") and dur is not None and pdt is not None:
            out.append((pos, dur, pdt))
            pos, pdt, dur = pos + dur, pdt + dur, None
    return out


def wall_at(segments: list[tuple[float, float, float]], media_time: float) -> float:
    for start, dur, wall in segments:
        if start <= media_time < start + dur:
            return wall + media_time - start
    raise AssertionError(f"media time {media_time} is outside the playlist")


def open_camera(tab: Tab, camera_id: str) -> Any:
    page = tab.page
    page.dblclick(f'.tile[data-camera-id="{camera_id}"]')
    page.wait_for_selector("#daybar[data-loaded='1']")
    page.wait_for_selector("#video[data-ready='1']")
    return page


def click_bar_at(page: Any, wall: float) -> float:
    """Click the day bar where it shows ``wall`` (epoch s); returns the instant the click names."""
    view = page.eval_on_selector("#daybar", "e => [Number(e.dataset.viewStart), Number(e.dataset.viewEnd)]")
    page.locator("#daybar").scroll_into_view_if_needed()
    box = page.locator("#daybar .track").bounding_box()
    f = (wall * 1000 - view[0]) / (view[1] - view[0])
    x = round(box["x"] + f * box["width"])
    page.mouse.click(x, box["y"] + box["height"] / 2)
    return float(view[0] + (x - box["x"]) / box["width"] * (view[1] - view[0])) / 1000


def test_a_camera_plays_shows_its_day_and_seeks_by_the_bar(site: Site, browser: Any) -> None:
    tab = Tab(browser, site)
    page = tab.sign_in("t1")
    t0 = time.monotonic()
    page = open_camera(tab, "gate")
    assert page.url.endswith("/cameras/gate?day=" + time.strftime("%Y-%m-%d", time.localtime()))  # bookmarkable
    page.wait_for_selector("#day-info:has-text('Day 1 of 1 available')")
    assert "basic plan" in page.inner_text("#day-info")
    # the bar: the recorded interval and the outage's gap, as the index has them
    runs = page.eval_on_selector_all("#daybar .run", "els => els.map(e => [Number(e.dataset.start), Number(e.dataset.end)])")
    assert len(runs) >= 2, runs
    assert int(page.get_attribute("#daybar", "data-gaps") or 0) >= 2  # before the first footage, the outage...
    rows = site.query("SELECT min(start_time) AS a, max(end_time) AS b FROM segments WHERE camera_id = 'gate'")
    assert abs(runs[0][0] / 1000 - rows[0]["a"].timestamp()) < 1.0
    outage = (runs[0][1] / 1000, runs[1][0] / 1000)
    assert outage[1] - outage[0] >= 3, outage  # the camera was away 6 s
    tab.shot("03-camera")

    # play: the video's time advances within 2 s of the click
    start_ct = page.eval_on_selector("#video", "v => v.currentTime")
    clicked = time.monotonic()
    page.click("#play")
    wait_js(page, f"document.querySelector('#video').currentTime > {start_ct} + 0.1", 2, "playback")
    started = time.monotonic() - clicked
    page.wait_for_timeout(1_500)
    # the clock on the page is the index's wall time of the frame on screen (within 1 s)
    ct, clock = page.evaluate("() => [document.querySelector('#video').currentTime,"
                              " Number(document.querySelector('#clock').dataset.epochMs)]")
    status, playlist = fetch(site, page.eval_on_selector("#video", "v => v.dataset.playlist || ''"), "t1")
    assert status == 200
    segments = parse_playlist(playlist)
    assert abs(clock / 1000 - wall_at(segments, ct)) < 1.0
    tab.shot("04-playing")

    # seek by clicking the bar, zoomed to the footage so a pixel is a fraction of a second
    page.click("#zoom-fit")
    target = runs[0][0] / 1000 + (runs[0][1] - runs[0][0]) / 2000  # the middle of the first run
    clicked = time.monotonic()
    instant = click_bar_at(page, target)
    wait_js(page, f"(() => {{ const c = Number(document.querySelector('#clock').dataset.epochMs);"
            f" const v = document.querySelector('#video'); return Math.abs(c - {instant * 1000}) < 1000"
            f" && v.readyState >= 2 && !v.seeking; }})()", 5, "the frame at the clicked instant")
    seek_s = time.monotonic() - clicked
    ct = page.eval_on_selector("#video", "v => v.currentTime")
    assert abs(wall_at(segments, ct) - instant) < 1.0  # the frame shown is from the clicked instant
    assert seek_s < 0.5 + 0.5, seek_s  # the seed target is 0.5 s; headroom for a loaded CI box
    tab.shot("05-seeked")
    print(f"open {time.monotonic() - t0:.2f}s, play started {started:.2f}s, seek {seek_s:.2f}s")
    tab.close()


def test_without_hls_js_the_browsers_own_hls_plays_a_period(site: Site, browser: Any) -> None:
    # the fallback for browsers without Media Source Extensions (iOS Safari), forced in chromium 156,
    # which has its own HLS player. Only the playback of a closed period (a preview) is checked: how a
    # native player maps a growing EVENT playlist to currentTime is not verified here.
    tab = Tab(browser, site, native_hls=True)
    page = tab.sign_in("t1")
    page = open_camera(tab, "gate")
    runs = page.eval_on_selector_all("#daybar .run", "els => els.map(e => [Number(e.dataset.start), Number(e.dataset.end)])")
    a = runs[-1][0] / 1000
    page.fill("#clip-from", local_input(a + 1))
    page.fill("#clip-to", local_input(a + 7))
    page.click("#clip-preview")
    page.wait_for_selector("#mode-note:has-text('Previewing the selection')")
    assert "/playlist.m3u8?" in page.evaluate("document.querySelector('#video').src")  # no MSE blob: the playlist
    wait_js(page, "document.querySelector('#video').currentTime > 1", 15, "native playback")
    assert page.evaluate("document.querySelector('#video').error") is None
    tab.shot("13-native-hls")
    tab.close()


def fetch(site: Site, path: str, who: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKENS[who]}"})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


# --------------------------------------------------------------------------- clips


def local_input(t: float, tz: str = "Europe/Berlin") -> str:
    """Epoch seconds as an <input type=datetime-local step=1> value in the page's zone."""
    return datetime.fromtimestamp(t, ZoneInfo(tz)).strftime("%Y-%m-%dT%H:%M:%S")


def test_a_clip_is_chosen_previewed_saved_listed_downloaded_renamed_and_deleted(site: Site, browser: Any,
                                                                                 tmp_path: Path) -> None:
    tab = Tab(browser, site)
    page = tab.sign_in("t1")
    page = open_camera(tab, "yard")
    page.wait_for_selector("#clip-usage:has-text('0 of 2 clips used (tiny plan)')")
    page.click("#zoom-fit")
    runs = page.eval_on_selector_all("#daybar .run", "els => els.map(e => [Number(e.dataset.start), Number(e.dataset.end)])")
    a, b = runs[-1][0] / 1000, runs[-1][1] / 1000
    assert b - a >= 10, runs
    # drag along the bar: the selection fills the From/To fields
    page.locator("#daybar").scroll_into_view_if_needed()
    box = page.locator("#daybar .track").bounding_box()
    view = page.eval_on_selector("#daybar", "e => [Number(e.dataset.viewStart), Number(e.dataset.viewEnd)]")

    def x_of(t: float) -> float:
        return float(box["x"] + (t * 1000 - view[0]) / (view[1] - view[0]) * box["width"])

    page.mouse.move(x_of(a + 2), box["y"] + 10)
    page.mouse.down()
    page.mouse.move(x_of(a + 5), box["y"] + 10, steps=5)
    page.mouse.move(x_of(a + 7), box["y"] + 10, steps=5)
    page.mouse.up()
    dragged = page.input_value("#clip-from"), page.input_value("#clip-to")
    assert dragged[0] and dragged[1] and dragged[0] < dragged[1], dragged
    assert not page.is_hidden("#daybar .selection")
    # exact times typed in (the page's zone), a preview, then save
    page.fill("#clip-from", local_input(a + 2))
    page.fill("#clip-to", local_input(a + 6))
    page.click("#clip-preview")
    page.wait_for_selector("#mode-note:has-text('Previewing the selection')")
    wait_js(page, "document.querySelector('#video').currentTime > 0.5", 5, "the preview playing")
    wall = page.eval_on_selector("#clock", "c => Number(c.dataset.epochMs)") / 1000
    assert a + 1 <= wall <= a + 7, (wall, a)  # the preview shows the selection
    tab.shot("06-clip-preview")
    page.fill("#clip-name", "Delivery at the yard")
    page.click("#clip-save")
    page.wait_for_selector(".clip:has-text('Delivery at the yard')")
    page.wait_for_selector("#status:has-text('saved')")
    assert "1 of 2 clips used" in page.inner_text("#clip-usage")
    assert "one left" in page.inner_text("#clip-usage")  # the limit shows before it is reached
    size = page.inner_text(".clip .clip-size")
    assert size.endswith("KB") or size.endswith("MB"), size
    tab.shot("07-clip-saved")
    # download: ffprobe finds the duration asked for (from the keyframe at or before the start)
    with page.expect_download() as dl:
        page.click(".clip a:has-text('Download')")
    path = tmp_path / "clip.mp4"
    dl.value.save_as(path)
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json",
                                       str(path)], capture_output=True, text=True, check=True).stdout)
    assert 3.5 <= float(probe["format"]["duration"]) <= 5.5, probe
    assert dl.value.suggested_filename.endswith(".mp4")
    # rename, through the page's prompt
    page.once("dialog", lambda d: d.accept("Delivery, renamed"))
    page.click(".clip button:has-text('Rename')")
    page.wait_for_selector(".clip:has-text('Delivery, renamed')")
    # the plan's limit: a second clip made elsewhere fills it; the page's try gets the 409, readably
    clip_id = page.get_attribute(".clip", "data-clip-id")
    status, _ = post_json(site, "/api/v1/clips", "t1", {"camera_id": "yard", "from": iso_z(a + 1), "to": iso_z(a + 3),
                                                         "name": "made elsewhere"})
    assert status == 201
    page.fill("#clip-name", "one too many")
    page.click("#clip-save")
    page.wait_for_selector("#status:has-text('Clip limit reached')")
    page.wait_for_selector("#clip-usage:has-text('2 of 2 clips used')")
    assert page.is_disabled("#clip-save")
    tab.shot("08-clip-limit")
    # delete, through the page's confirm
    page.once("dialog", lambda d: d.accept())
    page.click(f'.clip[data-clip-id="{clip_id}"] button:has-text("Delete")')
    page.wait_for_selector(f'.clip[data-clip-id="{clip_id}"]', state="detached")
    assert not page.is_disabled("#clip-save")
    tab.close(allow=("409",))  # the limit's answer, on purpose


def iso_z(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def post_json(site: Site, path: str, who: str, body: Any) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=60)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Authorization": f"Bearer {TOKENS[who]}", "Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


# --------------------------------------------------------------------------- tenants, phones, a dead camera


def test_another_tenants_token_sees_neither_the_camera_nor_its_clips(site: Site, browser: Any) -> None:
    status, clip = post_json(site, "/api/v1/clips", "t1", {"camera_id": "gate", "from": iso_z(time.time() - 20),
                                                           "to": iso_z(time.time() - 16), "name": "t1 only"})
    assert status == 201, clip
    tab = Tab(browser, site)
    page = tab.sign_in("t2")
    ids = page.eval_on_selector_all("#grid .tile", "els => els.map(e => e.dataset.cameraId)")
    assert ids == ["shop"]
    assert "gate" not in page.content() and "Front gate" not in page.content()
    rows = page.text_content("#storage-rows") or ""
    assert "Shop floor" in rows and "Yard" not in rows and "t1" not in rows
    tab.page.goto(site.base + "/cameras/gate")  # a shared link to another tenant's camera
    page.wait_for_selector(".error-text:has-text('No such camera for this sign-in')")
    tab.shot("09-other-tenant")
    page.goto(site.base + "/cameras/shop")
    page.wait_for_selector("#video[data-ready='1']")
    page.wait_for_selector("#clip-list .empty")
    assert "t1 only" not in page.content()
    tab.close(allow=("404",))  # the foreign camera's answer, on purpose


def test_the_page_works_at_phone_width_and_by_keyboard(site: Site, browser: Any) -> None:
    tab = Tab(browser, site, width=390)
    page = tab.sign_in("t1")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    tab.shot("10-phone-grid")
    page.focus('.tile[data-camera-id="gate"]')
    page.keyboard.press("Enter")  # Enter on a tile opens it, like a double click
    page.wait_for_selector("#video[data-ready='1']")
    # a run of 14 s at least (today's bar refreshes itself every 10 s as footage is indexed)
    wait_js(page, "(() => { const r = [...document.querySelectorAll('#daybar .run')].pop();"
                  " return r && Number(r.dataset.end) - Number(r.dataset.start) >= 14000; })()", 40, "14 s of footage")
    page.click("#zoom-fit")
    end = page.eval_on_selector_all("#daybar .run", "els => Number(els[els.length - 1].dataset.end)")
    click_bar_at(page, end / 1000 - 2)
    wait_js(page, f"Math.abs(Number(document.querySelector('#clock').dataset.epochMs) - {end - 2000}) < 1000", 5,
            "the frame clicked")
    before = page.eval_on_selector("#clock", "c => Number(c.dataset.epochMs)")
    page.focus("#daybar")
    page.keyboard.press("ArrowLeft")  # the bar is a slider: 10 s back
    wait_js(page, f"Math.abs(Number(document.querySelector('#clock').dataset.epochMs) - {before - 10_000}) < 1500",
            5, "the frame 10 s earlier")
    assert page.get_attribute("#daybar", "role") == "slider"
    assert page.get_attribute("#daybar", "aria-valuetext")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    tab.shot("11-phone-camera")
    tab.close()


def test_a_killed_camera_turns_unreachable_on_the_page(site: Site, browser: Any) -> None:
    tab = Tab(browser, site)
    page = tab.sign_in("ops")  # every tenant's cameras
    ids = sorted(page.eval_on_selector_all("#grid .tile", "els => els.map(e => e.dataset.cameraId)"))
    assert ids == ["gate", "shop", "yard"]
    site.cams["shop"].stop()
    try:
        wait_js(page, "document.querySelector('.tile[data-camera-id=shop]').dataset.state === 'unreachable'", 45,
                "shop shown unreachable")
        badge = page.locator(".tile[data-camera-id=shop] .state")
        assert badge.inner_text() == "Unreachable"
        assert "nothing listens at the address" in (badge.get_attribute("title") or "")  # the hint, on hover
        assert tile_state(page, "gate") == "recording"
        tab.shot("12-camera-unreachable")
    finally:
        site.cams["shop"].start()
    tab.close()
