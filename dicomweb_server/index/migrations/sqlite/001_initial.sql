-- Study, series and instance tables with the match-key columns of domain/attributes.py and
-- aggregates kept at store time. `id` orders results deterministically (insertion order).
CREATE TABLE studies (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    patient_id TEXT,
    patient_name TEXT,
    patient_name_fold TEXT,
    issuer_of_patient_id TEXT,
    patient_birth_date TEXT,
    patient_sex TEXT,
    study_date TEXT,
    study_time TEXT,
    accession_number TEXT,
    study_id TEXT,
    referring_physician_name TEXT,
    referring_physician_name_fold TEXT,
    study_description TEXT,
    modalities_in_study TEXT NOT NULL DEFAULT '',
    sop_classes_in_study TEXT NOT NULL DEFAULT '',
    number_of_series INTEGER NOT NULL DEFAULT 0,
    number_of_instances INTEGER NOT NULL DEFAULT 0,
    attributes BLOB NOT NULL,
    UNIQUE (site, study_instance_uid)
);
CREATE INDEX studies_patient_id ON studies (site, patient_id);
CREATE INDEX studies_patient_name ON studies (site, patient_name);
CREATE INDEX studies_patient_name_fold ON studies (site, patient_name_fold);
CREATE INDEX studies_study_date ON studies (site, study_date);
CREATE INDEX studies_accession_number ON studies (site, accession_number);

CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    modality TEXT,
    series_number INTEGER,
    series_description TEXT,
    performed_procedure_step_start_date TEXT,
    performed_procedure_step_start_time TEXT,
    number_of_instances INTEGER NOT NULL DEFAULT 0,
    attributes BLOB NOT NULL,
    UNIQUE (site, series_instance_uid)
);
CREATE INDEX series_study ON series (site, study_instance_uid);
CREATE INDEX series_modality ON series (site, modality);

CREATE TABLE instances (
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
    UNIQUE (site, sop_instance_uid)
);
CREATE INDEX instances_series ON instances (site, series_instance_uid, instance_number);
CREATE INDEX instances_study ON instances (site, study_instance_uid);
