"""Every SQL statement recorderd runs against the index, in one place so the schema and its users
can be read side by side (the schema itself is in ``sql/migrations``)."""

from __future__ import annotations

# The rows on this node's own disk (or in the store by this node's hand): every connection carries its
# node id (db.session_settings); rows default to it on insert.
MINE = "node = current_setting('recorderd.node')"

# One round trip per batch, whatever its size: arrays in, one row per written segment out.
# A row is only replaced by a better source (events.SOURCE_RANK), so re-indexing is idempotent.
UPSERT_SEGMENTS = """
INSERT INTO segments AS s
    (camera_id, start_time, end_time, duration_seconds, size_bytes, path, run_id, seq, source, source_rank)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::float8[], $5::int8[],
                     $6::text[], $7::uuid[], $8::int4[], $9::text[], $10::int2[])
ON CONFLICT (node, path) DO UPDATE SET
    camera_id = EXCLUDED.camera_id, start_time = EXCLUDED.start_time, end_time = EXCLUDED.end_time,
    duration_seconds = EXCLUDED.duration_seconds, size_bytes = EXCLUDED.size_bytes,
    run_id = EXCLUDED.run_id, seq = EXCLUDED.seq, source = EXCLUDED.source,
    source_rank = EXCLUDED.source_rank, indexed_at = now()
WHERE s.source_rank < EXCLUDED.source_rank
RETURNING s.source
"""

UPSERT_CAMERAS = """
INSERT INTO cameras AS c (id, name, tenant, plan, retention_days, max_bytes, enabled, in_config)
SELECT u.*, true FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int8[],
                             $7::bool[]) AS u
ON CONFLICT (id) DO UPDATE SET
    name = EXCLUDED.name, tenant = EXCLUDED.tenant, plan = EXCLUDED.plan,
    retention_days = EXCLUDED.retention_days, max_bytes = EXCLUDED.max_bytes,
    enabled = EXCLUDED.enabled, in_config = true, updated_at = now()
WHERE (c.name, c.tenant, c.plan, c.retention_days, c.max_bytes, c.enabled, c.in_config)
      IS DISTINCT FROM
      (EXCLUDED.name, EXCLUDED.tenant, EXCLUDED.plan, EXCLUDED.retention_days, EXCLUDED.max_bytes,
       EXCLUDED.enabled, true)
"""

# Cameras that left cameras.yaml keep their row (and footage) but are flagged.
MARK_REMOVED_CAMERAS = """
UPDATE cameras SET in_config = false, updated_at = now()
WHERE in_config AND NOT (id = ANY($1::text[]))
"""

# Distinct camera ids without reading every row: a loose index scan on segments_camera_start.
SEGMENT_CAMERAS = """
WITH RECURSIVE c(id) AS (
    (SELECT camera_id FROM segments ORDER BY camera_id LIMIT 1)
    UNION ALL
    SELECT (SELECT camera_id FROM segments WHERE camera_id > c.id ORDER BY camera_id LIMIT 1)
    FROM c WHERE c.id IS NOT NULL
)
SELECT id FROM c WHERE id IS NOT NULL
"""

# the second column is "not this file's business": retention is deleting it, or its bytes are archived
# (a local file of an archived row is one the archiver has yet to remove, not an orphan)
CAMERA_PATHS = ("SELECT path, deleting OR object_url IS NOT NULL, protected FROM segments"
                f" WHERE camera_id = $1 AND {MINE}")

# Rows of files reconcile cannot find. Never a protected one (a clip): its file may be on a disk that
# is away for now, and a deleted row would come back unprotected with the file.
DELETE_MISSING = f"""
DELETE FROM segments WHERE path = ANY($1::text[]) AND NOT deleting AND NOT protected AND object_url IS NULL
  AND {MINE}
"""

# After a wall-clock step: shift segments stamped before it, run by run up to a seq. $4 marks the rows
# of this one correction (in indexed_at, which nothing reads) so that a retry after an ambiguous
# failure (timeout or broken connection after the server committed) cannot shift a row twice.
# make_interval(secs => ...) is pure elapsed time: no day part bent by a session time zone's DST.
RESTAMP_SEGMENTS = """
UPDATE segments s
SET start_time = s.start_time + make_interval(secs => $3::float8),
    end_time = s.end_time + make_interval(secs => $3::float8),
    indexed_at = $4
FROM unnest($1::uuid[], $2::int4[]) AS r(run_id, max_seq)
WHERE s.run_id = r.run_id AND s.seq <= r.max_seq AND s.indexed_at IS DISTINCT FROM $4
"""

EXISTING_PATHS = f"SELECT path FROM segments WHERE path = ANY($1::text[]) AND {MINE}"

_SEGMENT_COLUMNS = f"""id, camera_id, start_time, end_time, duration_seconds, size_bytes, path, source,
       run_id, seq, object_url, node, {MINE} AS mine"""

# Overlap with [$2, $3): start < to AND end > from. The extra lower bound on start_time (from minus
# the camera's longest segment, one probe of segments_camera_duration) keeps the scan of
# segments_camera_start to the range asked for instead of the camera's whole history.
SEARCH = f"""
SELECT {_SEGMENT_COLUMNS}
FROM segments
WHERE camera_id = $1 AND NOT deleting
  AND start_time < $3 AND end_time > $2
  AND start_time >= $2 - make_interval(secs => 1 + coalesce(
        (SELECT max(duration_seconds) FROM segments WHERE camera_id = $1), 0))
ORDER BY start_time, end_time, id
"""

CAMERA_HAS_SEGMENTS = "SELECT EXISTS (SELECT 1 FROM segments WHERE camera_id = $1)"

# Per-camera totals for status and storage; LEFT JOIN so cameras removed from the config still show.
CAMERA_TOTALS = """
SELECT s.camera_id, count(*) AS segments, coalesce(sum(s.size_bytes), 0)::bigint AS bytes,
       coalesce(sum(s.size_bytes) FILTER (WHERE s.protected), 0)::bigint AS protected_bytes,
       min(s.start_time) AS oldest, max(s.end_time) AS newest,
       c.tenant, c.plan, c.in_config
FROM segments s LEFT JOIN cameras c ON c.id = s.camera_id
WHERE NOT s.deleting
GROUP BY s.camera_id, c.tenant, c.plan, c.in_config
ORDER BY s.camera_id
"""

# Footage per camera and UTC day since $2 (a UTC midnight), for ``recorderd storage``. The LATERAL
# subquery is one range scan of segments_camera_start per camera in $1, so the cost follows the window
# asked for, not the camera's whole history. A segment counts (bytes and seconds) to the UTC day it
# starts on: one that crosses midnight is not split.
DAILY_BYTES = """
SELECT c.id AS camera_id, d.day, d.segments, d.bytes, d.seconds
FROM unnest($1::text[]) AS c(id)
CROSS JOIN LATERAL (
    SELECT (s.start_time AT TIME ZONE 'UTC')::date AS day, count(*) AS segments,
           coalesce(sum(s.size_bytes), 0)::bigint AS bytes, coalesce(sum(s.duration_seconds), 0) AS seconds
    FROM segments s
    WHERE s.camera_id = c.id AND s.start_time >= $2 AND NOT s.deleting
    GROUP BY 1
) d
ORDER BY 1, 2
"""

CAMERAS = "SELECT id, name, tenant, plan, retention_days, max_bytes, enabled, in_config FROM cameras"

# --------------------------------------------------------------------------- clips (recorderd/clips.py)
# Only status 'ready' rows are clips; 'pending' (being cut, until pending_until) and 'deleting' are
# steps of creating and deleting one (see the module docstring of recorderd.clips).

_CLIP_COLUMNS = "id, camera_id, name, start_time, end_time, path, size_bytes, created_at, created_by"
# a clip's camera is of one of the tenants $N (NULL: no restriction), by the cameras table
_CLIP_TENANT = ("(${n}::text[] IS NULL"
                " OR EXISTS (SELECT 1 FROM cameras k WHERE k.id = clips.camera_id AND k.tenant = ANY(${n})))")

# held until the reserving transaction ends: count and insert of one camera's clips are one step
CLIP_LOCK = "SELECT pg_advisory_xact_lock(hashtext('clips:' || $1))"

# what counts against the plan's max_clips: ready clips and live reservations
CLIP_COUNT = """
SELECT count(*) FROM clips
WHERE camera_id = $1 AND (status = 'ready' OR (status = 'pending' AND pending_until > now()))
"""

# $3 the camera's clips directory; $5 seconds until a reservation is dead (the cut's timeout + margin)
CLIP_RESERVE = """
INSERT INTO clips (id, camera_id, name, path, created_by, status, pending_until)
SELECT n.id, $1, $2, $3 || '/' || n.id || '.mp4', $4, 'pending', now() + make_interval(secs => $5::float8)
FROM (SELECT nextval(pg_get_serial_sequence('clips', 'id')) AS id) n
RETURNING id, path
"""

CLIP_FINISH = f"""
UPDATE clips SET status = 'ready', pending_until = NULL, start_time = $2, end_time = $3, size_bytes = $4
WHERE id = $1 AND status = 'pending'
RETURNING {_CLIP_COLUMNS}
"""

# a failed create takes its reservation back (NULL: it finished after all, or is gone)
CLIP_ABANDON = """
UPDATE clips SET status = 'deleting' WHERE id = $1 AND status IN ('pending', 'deleting') RETURNING status
"""

# reservations past their deadline: their creator died; $1 one camera or NULL for all
CLIP_CLAIM_STALE = f"""
UPDATE clips SET status = 'deleting'
WHERE {MINE} AND status = 'pending' AND pending_until < now() AND ($1::text IS NULL OR camera_id = $1)
"""

CLIP_DELETING = f"""
SELECT id, camera_id FROM clips
WHERE {MINE} AND status = 'deleting' AND ($1::text IS NULL OR camera_id = $1) ORDER BY id
"""

CLIP_DROP = "DELETE FROM clips WHERE id = ANY($1::bigint[]) AND status = 'deleting'"

CLIP_PENDING_IDS = f"SELECT id FROM clips WHERE status = 'pending' AND {MINE}"

CLIP_MARK_DELETE = f"""
UPDATE clips SET status = 'deleting' WHERE id = $1 AND status = 'ready' AND {_CLIP_TENANT.format(n=2)}
RETURNING {_CLIP_COLUMNS}
"""

CLIP_UNMARK = "UPDATE clips SET status = 'ready' WHERE id = $1 AND status = 'deleting'"

CLIP_GET = f"""
SELECT {_CLIP_COLUMNS} FROM clips WHERE id = $1 AND status = 'ready' AND {_CLIP_TENANT.format(n=2)}
"""

CLIP_LIST = f"""
SELECT {_CLIP_COLUMNS} FROM clips
WHERE status = 'ready' AND ($1::text IS NULL OR camera_id = $1) AND {_CLIP_TENANT.format(n=2)}
ORDER BY camera_id, id
"""

CLIP_RENAME = f"""
UPDATE clips SET name = $2 WHERE id = $1 AND status = 'ready' AND {_CLIP_TENANT.format(n=3)}
RETURNING {_CLIP_COLUMNS}
"""

# ``recorderd storage``: ready clips per camera
CLIP_TOTALS = """
SELECT camera_id, count(*) AS clips, coalesce(sum(size_bytes), 0)::bigint AS clip_bytes
FROM clips WHERE status = 'ready' GROUP BY camera_id ORDER BY camera_id
"""

# --------------------------------------------------------------------------- archive (recorderd/archive.py)
# $1 camera ids, $2 their cutoffs (footage ending before is due), $3 archive protected footage too
_ARCHIVE_DUE = f"""
FROM segments s JOIN unnest($1::text[], $2::timestamptz[]) AS c(id, cutoff) ON s.camera_id = c.id
WHERE s.{MINE} AND s.object_url IS NULL AND NOT s.deleting AND s.end_time < c.cutoff AND (NOT s.protected OR $3)"""

ARCHIVE_CANDIDATES = f"""
SELECT s.id, s.camera_id, s.path, s.size_bytes, s.end_time {_ARCHIVE_DUE}
ORDER BY s.end_time, s.id LIMIT $4"""

ARCHIVE_BACKLOG = f"""
SELECT count(*) AS segments, coalesce(sum(s.size_bytes), 0)::bigint AS bytes, min(s.end_time) AS oldest
{_ARCHIVE_DUE}"""

# step 1, before the first byte goes: retention deletes this key with the row from now on
ARCHIVE_INTENT = """
UPDATE segments s SET upload_url = u.key
FROM unnest($1::bigint[], $2::text[]) AS u(id, key)
WHERE s.id = u.id AND s.object_url IS NULL AND NOT s.deleting"""

# step 3, after the server confirmed size and checksum: readers use the object from now on. A row
# retention marked meanwhile is not switched (its object is deleted by the archiver).
ARCHIVE_SWITCH = """
UPDATE segments s SET object_url = u.key, archived_at = now(), fragments = u.frag
FROM unnest($1::bigint[], $2::text[], $3::bytea[]) AS u(id, key, frag)
WHERE s.id = u.id AND s.object_url IS NULL AND NOT s.deleting
RETURNING s.id"""

# step 4 done: the local file is gone
ARCHIVE_SETTLED = "UPDATE segments SET upload_url = NULL WHERE id = ANY($1::bigint[]) AND object_url IS NOT NULL"

# switched rows whose local file may still be there (a crash between steps 3 and 4)
ARCHIVE_UNSETTLED = f"""
SELECT id, camera_id, path FROM segments
WHERE {MINE} AND upload_url IS NOT NULL AND object_url IS NOT NULL AND NOT deleting AND id > $1
ORDER BY id LIMIT $2"""

# where a row's bytes are, for the readers (playlist, media, export, clips)
SEGMENT_LOCATION = "SELECT path, object_url, size_bytes FROM segments WHERE id = $1 AND NOT deleting"

# --------------------------------------------------------------------------- compression (recorderd/compressjobs.py)
# $1 camera ids, $2 their cutoffs. Local footage only, and none an upload has begun on: the archive
# keeps the bytes it verified.
_COMPRESS_DUE = f"""
FROM segments s JOIN unnest($1::text[], $2::timestamptz[]) AS c(id, cutoff) ON s.camera_id = c.id
WHERE s.{MINE} AND s.compressed_at IS NULL AND s.object_url IS NULL AND s.upload_url IS NULL AND NOT s.deleting
  AND s.end_time < c.cutoff"""

COMPRESS_CANDIDATES = f"""
SELECT s.id, s.path, s.duration_seconds, s.end_time, c.cutoff {_COMPRESS_DUE}
ORDER BY s.end_time, s.id LIMIT $3"""

COMPRESS_BACKLOG = f"SELECT count(*) {_COMPRESS_DUE}"

# the index keeps the segment's times; only its size (and that it is done) change
COMPRESS_DONE = """
UPDATE segments SET size_bytes = $2, compressed_at = now()
WHERE id = $1 AND object_url IS NULL AND upload_url IS NULL AND NOT deleting"""
