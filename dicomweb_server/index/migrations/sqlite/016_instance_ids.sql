-- Instance row ids are never reused. The change feed judges an entry's instance by its row id
-- (index/events.py): `current` while that row is there, `replaced` once another row holds the
-- SOP Instance UID. A plain INTEGER PRIMARY KEY hands out max(id) + 1, so an instance deleted
-- and stored again (or restored from the trash) could get its old id back, and its old
-- entries read `current` with the new version's metadata. AUTOINCREMENT keeps the highest id
-- ever handed out, seeded here from the events too, which name every id stored since they
-- began. (PostgreSQL's bigserial sequence never goes back.)
CREATE TABLE instances_numbered (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT NOT NULL,
    number_of_frames INTEGER NOT NULL,
    pixel BLOB,
    bulk BLOB,
    attributes BLOB NOT NULL,
    metadata BLOB NOT NULL,
    UNIQUE (site, sop_instance_uid)
);
INSERT INTO instances_numbered (id, site, study_instance_uid, series_instance_uid,
    sop_instance_uid, sop_class_uid, instance_number, transfer_syntax_uid, blob_key, size,
    digest, number_of_frames, pixel, bulk, attributes, metadata)
SELECT id, site, study_instance_uid, series_instance_uid, sop_instance_uid, sop_class_uid,
    instance_number, transfer_syntax_uid, blob_key, size, digest, number_of_frames, pixel, bulk,
    attributes, metadata FROM instances ORDER BY id;
DROP TABLE instances;
ALTER TABLE instances_numbered RENAME TO instances;
CREATE INDEX instances_series ON instances (site, series_instance_uid, instance_number);
CREATE INDEX instances_study ON instances (site, study_instance_uid);
CREATE INDEX instances_site_id ON instances (site, id);
-- The counter starts past every id handed out: those still in use, and those since deleted,
-- which the events name.
DELETE FROM sqlite_sequence WHERE name = 'instances';
INSERT INTO sqlite_sequence (name, seq) VALUES ('instances', max(
    (SELECT COALESCE(MAX(id), 0) FROM instances),
    (SELECT COALESCE(MAX(instance_id), 0) FROM events)));
