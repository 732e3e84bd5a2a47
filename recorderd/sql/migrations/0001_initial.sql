-- recorderd schema v1: the segment index and the cameras it belongs to.

CREATE TABLE cameras (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    tenant          text,
    plan            text NOT NULL,
    retention_days  integer NOT NULL CHECK (retention_days > 0),
    max_bytes       bigint,
    enabled         boolean NOT NULL DEFAULT true,
    in_config       boolean NOT NULL DEFAULT true,   -- false once removed from cameras.yaml (footage kept)
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE segments (
    id                bigserial PRIMARY KEY,
    camera_id         text NOT NULL,
    start_time        timestamptz NOT NULL,
    end_time          timestamptz NOT NULL,
    duration_seconds  double precision NOT NULL,
    size_bytes        bigint NOT NULL,
    path              text NOT NULL UNIQUE,
    run_id            uuid,              -- one FFmpeg run; NULL when found without a run
    seq               integer,           -- 0, 1, 2 ... within the run: a gap in seq or time is visible
    source            text NOT NULL,     -- ffmpeg | recovered | reconcile | watch
    source_rank       smallint NOT NULL, -- a better source replaces a worse one for the same path
    protected         boolean NOT NULL DEFAULT false,  -- never deleted by retention (clips)
    deleting          boolean NOT NULL DEFAULT false,  -- retention marked it; file unlink may be done
    indexed_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (end_time >= start_time)
);

-- "camera + time range": WHERE camera_id = $1 AND start_time < $to AND end_time > $from
CREATE INDEX segments_camera_start ON segments (camera_id, start_time);
-- retention: oldest unprotected first, per camera and across cameras
CREATE INDEX segments_sweep ON segments (end_time) WHERE NOT protected;
CREATE INDEX segments_deleting ON segments (camera_id) WHERE deleting;
