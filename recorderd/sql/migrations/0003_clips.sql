-- recorderd schema v3: saved clips.
--
-- A clip is one MP4 cut from a camera's footage into <root>/clips/<camera_id>/<id>.mp4. Retention,
-- caps and the free-space floor never touch it; it goes only when a user deletes it.
--
-- status: 'pending' while the file is being cut (counted against the plan's limit, invisible
-- otherwise; dead once pending_until has passed), 'ready' once the file is complete and synced,
-- 'deleting' while its file is unlinked. Whatever a crash leaves pending (past pending_until) or
-- deleting is finished by recorderd.clips.recover: file first, then row.
CREATE TABLE clips (
    id             bigserial PRIMARY KEY,
    camera_id      text NOT NULL,
    name           text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    start_time     timestamptz,
    end_time       timestamptz,
    path           text NOT NULL UNIQUE,
    size_bytes     bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text,
    status         text NOT NULL DEFAULT 'ready' CHECK (status IN ('pending', 'ready', 'deleting')),
    pending_until  timestamptz,
    CHECK (end_time >= start_time)
);

-- a camera's clips (list, the plan's limit)
CREATE INDEX clips_camera ON clips (camera_id, id);
-- what recover has to finish
CREATE INDEX clips_unfinished ON clips (pending_until) WHERE status <> 'ready';
