-- Objects being deleted (purge, the orphan sweep, a refused part's object): a deleter records
-- each key here and commits before it checks that no row needs the object, and removes its
-- marks (counting one more in blob_deletion_epoch) once the objects are gone. A store of the
-- same key (object keys are content digests, so the same bytes stored again have the same
-- key) commits its rows, then reads both: a mark, or an epoch moved since it wrote the
-- object, means a deletion may have removed what it wrote, so it waits for the marks to go
-- and writes the object again. Either the deleter's check sees the new row, or the store
-- sees the deleter (services/delete.py).
CREATE TABLE blob_deletions (
    id INTEGER PRIMARY KEY,
    blob_key TEXT NOT NULL,
    started REAL NOT NULL
);
CREATE INDEX blob_deletions_blob_key ON blob_deletions (blob_key);
CREATE TABLE blob_deletion_epoch (epoch INTEGER NOT NULL);
INSERT INTO blob_deletion_epoch (epoch) VALUES (0);
