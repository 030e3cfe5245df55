-- Correcting and removing data (issue 18): soft delete into a trash table, IOCM rejections,
-- legal holds, maintenance leases, and when each study was received (for retention).

-- When a study row was created. A stable default is evaluated once for the rows that exist
-- (they count as received now) and at each insert for new rows, so the add paths need not
-- know the column.
ALTER TABLE studies ADD COLUMN received double precision NOT NULL
    DEFAULT extract(epoch FROM now());

-- Deleted (or rejected) instances: the instance row as it was, who deleted it, when and why,
-- and the series and study rows it belonged to (JSON), so that `restore` can put it back.
-- The object stays in the store until purge (DICOMWEB_DELETE_GRACE_DAYS after deleted_at).
CREATE TABLE deleted_instances (
    id bigserial PRIMARY KEY,
    site text COLLATE "C" NOT NULL,
    study_instance_uid text COLLATE "C" NOT NULL,
    series_instance_uid text COLLATE "C" NOT NULL,
    sop_instance_uid text COLLATE "C" NOT NULL,
    sop_class_uid text COLLATE "C" NOT NULL,
    instance_number integer,
    transfer_syntax_uid text COLLATE "C" NOT NULL,
    blob_key text COLLATE "C" NOT NULL,
    size bigint NOT NULL,
    digest text COLLATE "C" NOT NULL,
    number_of_frames integer NOT NULL,
    pixel bytea,
    bulk bytea,
    attributes bytea NOT NULL,
    metadata bytea NOT NULL,
    deleted_at double precision NOT NULL,
    deleted_by text NOT NULL,
    reason text NOT NULL,
    series_row bytea NOT NULL,
    study_row bytea NOT NULL
);
CREATE INDEX deleted_instances_study ON deleted_instances (site, study_instance_uid);
CREATE INDEX deleted_instances_deleted_at ON deleted_instances (deleted_at);
CREATE INDEX deleted_instances_blob_key ON deleted_instances (blob_key);

-- IOCM rejections (IHE RAD TF-3 4.66): every SOP Instance a rejection note (or the reject
-- resource) named, present or not: a later store of one is refused.
CREATE TABLE rejections (
    site text COLLATE "C" NOT NULL,
    sop_instance_uid text COLLATE "C" NOT NULL,
    study_instance_uid text COLLATE "C" NOT NULL,
    series_instance_uid text COLLATE "C" NOT NULL,
    code text NOT NULL,
    note_sop_instance_uid text COLLATE "C",
    rejected_at double precision NOT NULL,
    rejected_by text NOT NULL,
    PRIMARY KEY (site, sop_instance_uid)
);

-- Legal holds: a study, or every study of a patient, that must not be deleted, rejected or
-- expired; site NULL holds it in every site.
CREATE TABLE legal_holds (
    id bigserial PRIMARY KEY,
    site text COLLATE "C",
    patient_id text COLLATE "C",
    issuer_of_patient_id text COLLATE "C",
    study_instance_uid text COLLATE "C",
    reason text NOT NULL,
    created double precision NOT NULL,
    created_by text NOT NULL
);

-- One maintenance run at a time across processes and machines: a lease with an expiry.
CREATE TABLE maintenance_leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    until double precision NOT NULL
);
-- Retention finds old studies per site by date received.
CREATE INDEX studies_received ON studies (site, received);
