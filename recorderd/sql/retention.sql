-- Named queries of the retention sweeper (recorderd/retention.py), split on "-- name:" lines.
-- Every batch query is keyset-paged so rows skipped on purpose (being written, failed) are read once.
-- A node sweeps its own rows only (node = current_setting('recorderd.node'), sql/migrations/0005): their
-- files are on its disk, or their objects were put there by its archiver.

-- name: cameras_with_footage
-- distinct camera ids by a loose index scan over segments_camera_start: cheap on a huge table
WITH RECURSIVE c AS (
    (SELECT camera_id FROM segments WHERE node = current_setting('recorderd.node') ORDER BY camera_id LIMIT 1)
    UNION ALL
    SELECT (SELECT s.camera_id FROM segments s WHERE s.node = current_setting('recorderd.node') AND s.camera_id > c.camera_id
            ORDER BY s.camera_id LIMIT 1)
    FROM c WHERE c.camera_id IS NOT NULL
) SELECT camera_id FROM c WHERE camera_id IS NOT NULL

-- name: camera_table
SELECT id, tenant, retention_days, max_bytes FROM cameras

-- name: oldest_of_camera
-- $1 camera, $2 end cutoff, ($3, $4) keyset (start_time, id), $5 limit
SELECT id, camera_id, path, size_bytes, start_time, end_time, protected,
       coalesce(object_url, upload_url) AS object_url, object_url IS NOT NULL AS archived FROM segments
WHERE camera_id = $1 AND node = current_setting('recorderd.node') AND start_time < $2 AND end_time < $2 AND NOT protected AND NOT deleting
  AND start_time >= $3 AND (start_time, id) > ($3, $4)
ORDER BY start_time, id LIMIT $5

-- name: camera_total
-- local bytes only: max_bytes bounds the camera's share of this disk; archived footage goes by age
SELECT coalesce(sum(size_bytes), 0)::bigint FROM segments
WHERE camera_id = $1 AND node = current_setting('recorderd.node') AND NOT protected AND NOT deleting AND object_url IS NULL

-- name: oldest_all
-- across cameras, for the free-space floor (local files only: an archived row frees no disk);
-- ($1, $2) keyset (end_time, id), $3 limit
SELECT id, camera_id, path, size_bytes, start_time, end_time, protected,
       coalesce(object_url, upload_url) AS object_url, object_url IS NOT NULL AS archived FROM segments
WHERE node = current_setting('recorderd.node') AND NOT protected AND NOT deleting AND object_url IS NULL AND end_time >= $1 AND (end_time, id) > ($1, $2)
ORDER BY end_time, id LIMIT $3

-- name: mark
-- step 1: committed before any unlink; re-checks "not protected" atomically
UPDATE segments SET deleting = true
WHERE id = ANY($1::bigint[]) AND NOT protected AND NOT deleting
RETURNING id, camera_id, path, size_bytes, start_time, end_time, protected,
          coalesce(object_url, upload_url) AS object_url, object_url IS NOT NULL AS archived

-- name: unmark
UPDATE segments SET deleting = false WHERE id = ANY($1::bigint[])

-- name: delete
-- step 3, after the unlinks
DELETE FROM segments WHERE id = ANY($1::bigint[]) AND deleting

-- name: delete_paths
-- rows of files the filesystem fallback removed (the indexer's reconcile would drop them too)
DELETE FROM segments WHERE path = ANY($1::text[]) AND node = current_setting('recorderd.node') AND NOT protected AND object_url IS NULL

-- name: interrupted
-- rows a crash left marked; $2 = ids a batch of ours is working on right now
SELECT id, camera_id, path, size_bytes, start_time, end_time, protected,
       coalesce(object_url, upload_url) AS object_url, object_url IS NOT NULL AS archived FROM segments
WHERE node = current_setting('recorderd.node') AND deleting AND id > $1 AND id <> ALL($2::bigint[])
ORDER BY id LIMIT $3

-- name: protected_paths
SELECT path FROM segments WHERE protected AND node = current_setting('recorderd.node')

-- name: survey
-- one scan per sweep: storage per camera, oldest deletable footage, newest footage, the protected paths
SELECT camera_id, coalesce(sum(size_bytes) FILTER (WHERE object_url IS NULL), 0)::bigint AS used,
       min(start_time) FILTER (WHERE NOT protected AND NOT deleting) AS oldest,
       max(end_time) AS newest,
       array_agg(path) FILTER (WHERE protected) AS protected
FROM segments WHERE node = current_setting('recorderd.node') GROUP BY camera_id
