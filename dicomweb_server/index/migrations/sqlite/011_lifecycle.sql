-- Correcting and removing data (issue 18): soft delete into a trash table, IOCM rejections,
-- legal holds, maintenance leases, and when each study was received (for retention).

-- When a study row was created; studies that exist already count as received now.
ALTER TABLE studies ADD COLUMN received REAL;
UPDATE studies SET received = (julianday('now') - 2440587.5) * 86400.0;
-- New rows get it here, so the add paths need not know it (PostgreSQL: a column default).
CREATE TRIGGER studies_received AFTER INSERT ON studies FOR EACH ROW WHEN NEW.received IS NULL
BEGIN
    UPDATE studies SET received = (julianday('now') - 2440587.5) * 86400.0 WHERE id = NEW.id;
END;

-- Deleted (or rejected) instances: the instance row as it was, who deleted it, when and why,
-- and the series and study rows it belonged to (JSON), so that `restore` can put it back.
-- The object stays in the store until purge (DICOMWEB_DELETE_GRACE_DAYS after deleted_at).
CREATE TABLE deleted_instances (
    id INTEGER PRIMARY KEY,
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
    deleted_at REAL NOT NULL,
    deleted_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    series_row BLOB NOT NULL,
    study_row BLOB NOT NULL
);
CREATE INDEX deleted_instances_study ON deleted_instances (site, study_instance_uid);
CREATE INDEX deleted_instances_deleted_at ON deleted_instances (deleted_at);
CREATE INDEX deleted_instances_blob_key ON deleted_instances (blob_key);

-- IOCM rejections (IHE RAD TF-3 4.66): every SOP Instance a rejection note (or the reject
-- resource) named, present or not: a later store of one is refused.
CREATE TABLE rejections (
    site TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    code TEXT NOT NULL,
    note_sop_instance_uid TEXT,
    rejected_at REAL NOT NULL,
    rejected_by TEXT NOT NULL,
    PRIMARY KEY (site, sop_instance_uid)
);

-- Legal holds: a study, or every study of a patient, that must not be deleted, rejected or
-- expired; site NULL holds it in every site.
CREATE TABLE legal_holds (
    id INTEGER PRIMARY KEY,
    site TEXT,
    patient_id TEXT,
    issuer_of_patient_id TEXT,
    study_instance_uid TEXT,
    reason TEXT NOT NULL,
    created REAL NOT NULL,
    created_by TEXT NOT NULL
);

-- One maintenance run at a time across processes and machines: a lease with an expiry.
CREATE TABLE maintenance_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until REAL NOT NULL
);
-- Retention finds old studies per site by date received.
CREATE INDEX studies_received ON studies (site, received);
