"""Prometheus metric objects, defined once so every module records into the same names.

Names and units follow Prometheus conventions (``_total``, ``_seconds``, ``_bytes``). Labels never
carry a URL; camera labels are the config id only.
"""

from __future__ import annotations

import time

from prometheus_client import PROCESS_COLLECTOR, REGISTRY, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.metrics import MetricWrapperBase

from recorderd import __version__

# "unauthorized", "not_found", "unreachable", "unsupported": why FFmpeg cannot record (recorderd.diagnose)
CAMERA_STATES = ("starting", "recording", "unauthorized", "not_found", "unreachable", "unsupported", "backoff",
                 "stalled", "disabled", "storage_missing")



class _ProcessCollector(ProcessCollector):
    """``process_*`` metrics that need only ``/proc/self``: the unit's ``ProcSubset=pid`` hides
    ``/proc/stat``, where the stock collector reads the boot time (without it every series is gone)."""

    def _boot_time(self) -> float:
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


if isinstance(PROCESS_COLLECTOR, ProcessCollector) and not isinstance(PROCESS_COLLECTOR, _ProcessCollector):
    REGISTRY.unregister(PROCESS_COLLECTOR)
    _ProcessCollector(registry=REGISTRY)

BUILD_INFO = Info("recorderd_build", "Build information")
BUILD_INFO.info({"version": __version__})

CAMERA_STATE = Gauge("recorderd_camera_state", "1 for the camera's current state, 0 for the others",
                     ["camera", "state"])
CAMERA_UP = Gauge("recorderd_camera_up", "1 while the camera is recording", ["camera"])
FFMPEG_RESTARTS = Counter("recorderd_ffmpeg_restarts_total", "FFmpeg restarts by reason",
                          ["camera", "reason"])
SEGMENTS = Counter("recorderd_segments_total", "Segments finished", ["camera"])
SEGMENT_BYTES = Counter("recorderd_recorded_bytes_total", "Bytes in finished segments", ["camera"])
LAST_SEGMENT_END = Gauge("recorderd_last_segment_end_timestamp_seconds",
                         "End time of the camera's last finished segment", ["camera"])
# The configured length, so an alert can say "no segment for two segment lengths" per camera.
CAMERA_SEGMENT_SECONDS = Gauge("recorderd_camera_segment_seconds",
                               "Configured segment length of an enabled camera", ["camera"])
FFMPEG_OUTPUT_SUPPRESSED = Counter("recorderd_ffmpeg_output_suppressed_lines_total",
                                   "FFmpeg stderr lines not logged because of the per-camera rate limit",
                                   ["camera"])

# How late the event loop wakes a timer: anything the loop waits on (a blocking call, a huge JSON
# answer) delays every camera's supervision and every HTTP answer by this much.
LOOP_LAG = Histogram("recorderd_event_loop_lag_seconds", "How late the event loop ran a 0.25 s timer",
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
API_CUTS = Counter("recorderd_api_cuts_total",
                   "Exports and clip creations asked over HTTP, by outcome (busy: refused with 429)",
                   ["kind", "outcome"])
for _kind in ("export", "clip"):
    for _outcome in ("ok", "error", "busy"):
        API_CUTS.labels(_kind, _outcome)  # at 0 from the start: increase() sees the first one
INDEX_LAG = Histogram("recorderd_index_lag_seconds", "Segment closed to row committed",
                      buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600))
INDEX_PENDING = Gauge("recorderd_index_pending_rows", "Segment rows waiting for the database")
# The cap (database.pending_max_rows) beyond which rows are dropped: alerts compare against it.
INDEX_PENDING_MAX = Gauge("recorderd_index_pending_max_rows",
                          "Pending rows kept in memory before the oldest are dropped")
INDEXED_ROWS = Counter("recorderd_indexed_segments_total", "Segment rows written", ["source"])
INDEX_DROPPED = Counter("recorderd_index_dropped_rows_total",
                        "Rows dropped from memory while the database was away (re-found by reconcile)")
DATABASE_UP = Gauge("recorderd_database_up", "1 when the index database is reachable")

RETENTION_DELETED = Counter("recorderd_retention_deleted_segments_total", "Segments deleted", ["reason"])
RETENTION_DELETED_BYTES = Counter("recorderd_retention_deleted_bytes_total", "Bytes deleted", ["reason"])
SWEEP_DURATION = Histogram("recorderd_retention_sweep_duration_seconds", "Retention sweep duration",
                           buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
STORAGE_USED = Gauge("recorderd_storage_used_bytes", "Footage bytes per camera (from the index)", ["camera"])
DISK_FREE = Gauge("recorderd_disk_free_bytes", "Free bytes on the storage filesystem")
DISK_USED_RATIO = Gauge("recorderd_disk_used_ratio", "Used fraction of the storage filesystem")
DISK_TOTAL = Gauge("recorderd_disk_total_bytes", "Size of the storage filesystem")
# max(min_free_bytes, min_free_percent of the disk): below it the box is degraded.
DISK_FLOOR = Gauge("recorderd_disk_floor_bytes", "Free-space floor the retention sweeper defends")

CONFIG_RELOADS = Counter("recorderd_config_reloads_total", "Config reloads by result", ["result"])
CONFIG_LAST_RELOAD_OK = Gauge("recorderd_config_last_reload_successful",
                              "1 if the last config reload was applied")

# --- time, storage volume, database slowness (issue 8)
CLOCK_TRUSTED = Gauge("recorderd_clock_trusted",
                      "1 while the wall clock is trusted; 0 while age deletions are refused")
CLOCK_STEPS = Counter("recorderd_clock_steps_total", "Wall-clock steps detected against monotonic time",
                      ["direction"])
RESTAMPED_SEGMENTS = Counter("recorderd_restamped_segments_total",
                             "Indexed segments whose times were corrected after a clock step")
CAMERA_RESYNCS = Counter("recorderd_camera_resyncs_total",
                         "Runs re-synced because stream time and wall time parted", ["camera", "reason"])
RETENTION_PAUSED = Gauge("recorderd_retention_paused",
                         "1 while retention refuses deletions for the named reason", ["reason"])
STORAGE_MISSING = Gauge("recorderd_storage_missing",
                        "1 while the storage volume marker is missing and the index has footage")
DATABASE_TIMEOUTS = Counter("recorderd_database_timeouts_total",
                            "Database operations that timed out (slow, not down): retried", ["op"])
for _op in ("query", "write", "restamp", "cameras", "reconcile", "ping"):  # at 0: increase() sees the 1st
    DATABASE_TIMEOUTS.labels(_op)
HEADER_ONLY_REMOVED = Counter("recorderd_header_only_files_removed_total",
                              "Segment files holding only an MP4 header (no media) that were removed")

# --- running a box unattended (issue 9)
CONFIG_FALLBACK = Gauge("recorderd_config_fallback",
                        "1 while the daemon runs its last good config because the file on disk is invalid")
RETENTION_LAST_SWEEP = Gauge("recorderd_retention_last_sweep_timestamp_seconds",
                             "When the last retention sweep that reached the index finished (Unix time)")
EARLY_DELETED = Counter("recorderd_retention_early_deleted_segments_total",
                        "Segments the free-space floor deleted before their retention ended", ["camera"])
EARLY_DELETED_BYTES = Counter("recorderd_retention_early_deleted_bytes_total",
                              "Bytes the free-space floor deleted before their retention ended", ["camera"])
STORAGE_READ_ONLY = Gauge("recorderd_storage_read_only",
                          "1 while the storage filesystem is mounted read-only (nothing can be recorded)")

HEALTHY = Gauge("recorderd_healthy", "1 when /healthz reports ok, 0 when degraded")
HEALTH_DEGRADED = Gauge("recorderd_health_degraded", "1 while the named health check fails", ["check"])


def set_camera_state(camera: str, state: str) -> None:
    for s in CAMERA_STATES:
        CAMERA_STATE.labels(camera, s).set(1 if s == state else 0)
    CAMERA_UP.labels(camera).set(1 if state == "recording" else 0)


_last_end: dict[str, float] = {}


def note_segment_end(camera: str, end: float) -> None:
    """``recorderd_last_segment_end_timestamp_seconds``: the newest end seen, from a finished segment or
    from the index at start (so "not recording for N minutes" survives a daemon restart)."""
    if end > _last_end.get(camera, float("-inf")):
        _last_end[camera] = end
        LAST_SEGMENT_END.labels(camera).set(end)


def set_camera_segment_seconds(camera: str, seconds: float | None) -> None:
    """Publish the segment length of an enabled camera; None (disabled) removes the series. Also
    creates the camera's early-deletion counters at 0, so that an alert's increase() sees the first."""
    EARLY_DELETED.labels(camera)
    EARLY_DELETED_BYTES.labels(camera)
    if seconds is None:
        _remove(CAMERA_SEGMENT_SECONDS, camera)
    else:
        CAMERA_SEGMENT_SECONDS.labels(camera).set(seconds)


def forget_camera(camera: str) -> None:
    """A removed camera's series go away instead of freezing at their last value."""
    for s in CAMERA_STATES:
        _remove(CAMERA_STATE, camera, s)
    _last_end.pop(camera, None)
    for g in (CAMERA_UP, LAST_SEGMENT_END, STORAGE_USED, CAMERA_SEGMENT_SECONDS, FFMPEG_OUTPUT_SUPPRESSED,
              SEGMENTS, SEGMENT_BYTES):
        _remove(g, camera)
    for g in (EARLY_DELETED, EARLY_DELETED_BYTES):
        _remove(g, camera)
    for metric in (FFMPEG_RESTARTS, CAMERA_RESYNCS):  # labelled (camera, reason): every reason seen
        for labels in [k for k in list(metric._metrics) if k[0] == camera]:
            _remove(metric, *labels)


def _remove(metric: MetricWrapperBase, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


# --------------------------------------------------------------------------- archive (recorderd/archive.py)
ARCHIVE_BACKLOG_SEGMENTS = Gauge("recorderd_archive_backlog_segments",
                                 "Finished local segments past their plan's archive_after_hours, not uploaded yet")
ARCHIVE_BACKLOG_BYTES = Gauge("recorderd_archive_backlog_bytes", "Bytes of the archive backlog")
ARCHIVE_OLDEST_SECONDS = Gauge("recorderd_archive_backlog_oldest_seconds",
                               "Age (since its end) of the oldest segment waiting for upload; 0 with no backlog")
ARCHIVE_UPLOADED = Counter("recorderd_archive_uploaded_segments_total", "Segments uploaded, verified and switched")
ARCHIVE_UPLOADED_BYTES = Counter("recorderd_archive_uploaded_bytes_total", "Bytes of the segments archived")
ARCHIVE_FAILURES = Counter("recorderd_archive_failures_total", "Failed archive steps by step",
                           ["step"])  # setup | probe | upload | verify | read | unlink | delete
ARCHIVE_DELETED = Counter("recorderd_archive_deleted_objects_total", "Archived objects deleted by retention")
ARCHIVE_UP = Gauge("recorderd_archive_up", "1 while the object store answers, 0 after a failed request")
ARCHIVE_CONFIGURED = Gauge("recorderd_archive_configured",
                           "1 while archive: is configured (recorderd_archive_up says whether it answers)")
ARCHIVE_UNARCHIVED_DELETED = Counter(
    "recorderd_archive_unarchived_deleted_total",
    "Segments the free-space floor deleted before they were archived")


# ---- compression (recorderd/compress.py)
COMPRESS_BACKLOG = Gauge("recorderd_compress_backlog_segments",
                         "Segments past their plan's compress_after_days, not compressed yet")
COMPRESS_OLDEST_SECONDS = Gauge("recorderd_compress_backlog_oldest_seconds",
                                "How long the oldest due segment has waited since it became due; 0 with no backlog")
COMPRESS_BEHIND = Gauge("recorderd_compress_behind",
                        "1 while the oldest due segment has waited longer than compression.behind_seconds")
COMPRESS_CPU_SECONDS = Counter("recorderd_compress_cpu_seconds_total",
                               "CPU seconds the compression FFmpegs used (their own -benchmark figures)")
COMPRESS_SAVED_BYTES = Counter("recorderd_compress_saved_bytes_total",
                               "Bytes freed by replacing segments with their smaller re-encodes")
COMPRESS_JOBS = Counter("recorderd_compress_jobs_total", "Compression jobs finished, by outcome",
                        ["outcome"])  # compressed | already | not_smaller | failed


# ---- several nodes, one index (recorderd/nodes.py)
NODE_CLUSTERED = Gauge("recorderd_node_clustered", "1 when this node shares cameras with others by leases")
NODE_CAMERAS = Gauge("recorderd_node_cameras", "Cameras this node holds a lease on (held) or is taking over "
                     "(incoming: recording before the lease is its own)", ["kind"])
NODE_PEERS = Gauge("recorderd_node_peers", "Live nodes in the cluster, this one included, by the last look")
NODE_UNASSIGNED = Gauge("recorderd_cluster_cameras_unassigned",
                        "Enabled cameras no live lease holds, by this node's last look")
NODE_DRAINING = Gauge("recorderd_node_draining", "1 while this node hands its cameras over before it stops")
NODE_UP = Gauge("recorderd_node_leases_up", "1 while lease renewals reach PostgreSQL")
NODE_LEASE_QUERIES = Counter("recorderd_node_lease_queries_total",
                             "Statements the lease keeper sent to PostgreSQL (renewals, reads, claims)")
NODE_LEASES_LOST = Counter("recorderd_node_leases_lost_total",
                           "Cameras stopped because another node holds their lease now (fencing)")
NODE_HANDOVERS = Counter("recorderd_node_handovers_total",
                         "Cameras moved by make-before-break, by direction (in: taken over; requested)",
                         ["direction"])  # in | requested | abandoned
NODE_ACQUIRED = Counter("recorderd_node_leases_acquired_total",
                        "Free or expired leases this node took")
