-- recorderd schema v4: footage that ages into object storage (recorderd/archive.py) or a smaller
-- encoding (recorderd/compress.py).
--
-- ``path`` stays the segment's identity (its local path, unique) for its whole life, so a file a
-- crash left on disk after its upload is still recognised as this row and never indexed twice.
-- ``object_url`` is where the bytes are once archived, ``s3://bucket/key`` (NULL: on the local disk):
-- readers use the object when it is set, whatever ``archive.url`` says later. ``fragments`` is the
-- fragment map read from the local file before upload, so a playlist over archived footage needs no
-- request to the object store and a seek is one ranged GET.
ALTER TABLE segments ADD COLUMN object_url text;
ALTER TABLE segments ADD COLUMN archived_at timestamptz;
ALTER TABLE segments ADD COLUMN fragments bytea;
ALTER TABLE segments ADD COLUMN compressed_at timestamptz;

-- the archiver's work list: local, finished footage by age
CREATE INDEX segments_local_end ON segments (end_time) WHERE object_url IS NULL AND NOT deleting;

-- ``upload_url``: an upload to this key began (the object may exist). Set before the first byte is
-- sent and cleared once the local file is gone after the switch, so retention deletes an object a
-- crash left behind with its row, and the archiver finds switched rows whose local file it has yet
-- to remove.
ALTER TABLE segments ADD COLUMN upload_url text;
CREATE INDEX segments_unsettled ON segments (id) WHERE upload_url IS NOT NULL;
