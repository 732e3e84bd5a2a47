-- recorderd schema v5: several nodes, one index (recorderd/nodes.py).
--
-- Every recorderd connection carries ``recorderd.node`` (its node id) as a session setting, so the
-- rows a node writes name it without a parameter, and the statements that touch its own disk (retention,
-- reconcile, the archiver, compression, clips' files) say ``node = current_setting('recorderd.node')``.
-- The node that applies this migration owns the rows already there: before it, one box held them all.

-- a constant default is a metadata-only change however big the table is; the expression default that
-- follows names the writing node from now on
DO $$ BEGIN
    EXECUTE format('ALTER TABLE segments ADD COLUMN node text NOT NULL DEFAULT %L',
                   current_setting('recorderd.node'));
    EXECUTE format('ALTER TABLE clips ADD COLUMN node text NOT NULL DEFAULT %L',
                   current_setting('recorderd.node'));
END $$;
ALTER TABLE segments ALTER COLUMN node SET DEFAULT current_setting('recorderd.node');
ALTER TABLE clips ALTER COLUMN node SET DEFAULT current_setting('recorderd.node');

-- two boxes may use the same storage root path (and, recording one camera during a handover, name a file
-- alike): a path is unique per node
ALTER TABLE segments DROP CONSTRAINT segments_path_key;
CREATE UNIQUE INDEX segments_node_path ON segments (node, path);
ALTER TABLE clips DROP CONSTRAINT clips_path_key;
CREATE UNIQUE INDEX clips_node_path ON clips (node, path);
-- a node's own footage of a camera by time (retention, reconcile)
CREATE INDEX segments_node_camera ON segments (node, camera_id, start_time);

-- The nodes, as they last said: a node is alive while seen_at is within its lease.
CREATE TABLE nodes (
    id             text PRIMARY KEY,
    url            text,
    max_cameras    integer,
    lease_seconds  double precision NOT NULL,
    draining       boolean NOT NULL DEFAULT false,
    started_at     timestamptz NOT NULL DEFAULT now(),
    seen_at        timestamptz NOT NULL DEFAULT now()
);

-- One row per camera some node records. The holder renews expires_at (server time: nodes never compare
-- their own clocks); any node may take a row that has expired. handover_to: a node that records the
-- camera too and takes the lease once it does (make-before-break). state: the holder's camera state,
-- for the other nodes' API.
CREATE TABLE leases (
    camera_id    text PRIMARY KEY,
    node         text NOT NULL,
    expires_at   timestamptz NOT NULL,
    since        timestamptz NOT NULL DEFAULT now(),
    handover_to  text,
    handover_at  timestamptz,
    state        text
);

-- what the nodes share and nobody configures: the key that authenticates one node's request to another
CREATE TABLE cluster (
    key    text PRIMARY KEY,
    value  text NOT NULL
);
