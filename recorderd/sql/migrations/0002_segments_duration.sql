-- recorderd schema v2: bound the time-range search.
--
-- "What overlaps [from, to)?" is start_time < to AND end_time > from. The (camera_id, start_time)
-- index can only serve that with a lower bound on start_time too: start_time >= from - longest
-- segment of the camera. This index makes that longest duration a single index probe.
CREATE INDEX segments_camera_duration ON segments (camera_id, duration_seconds);
