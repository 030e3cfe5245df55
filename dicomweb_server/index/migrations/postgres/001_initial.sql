-- Study, series and instance tables, column for column as migrations/sqlite/001_initial.sql,
-- with the aggregates kept at store time (PS3.18 10.6.3: NumberOfStudyRelatedSeries and
-- friends are returned by every study and series search).
--
-- * `id` is a bigserial: search results and WADO streams are ordered by it, i.e. by insertion.
-- * Text columns use the "C" collation so that equality, LIKE and the '~'-closed upper bounds
--   of range matching (index/sql.py) compare bytes exactly as SQLite does, whatever the
--   database's default locale is; UID comparisons also get cheaper.
-- * JSON is stored as bytea: written once, served as is, never parsed by the server.
-- * No foreign keys: add_instance inserts the instance row first (its unique key is the
--   lock that serialises duplicate stores) and only then upserts series and study, in
--   that fixed order; FK checks would lock parents first and invert that order.
-- * studies and series are rewritten on every store (counters); a fillfactor below 100 leaves
--   room on the page for HOT updates, as none of the counter columns is indexed.
CREATE TABLE studies (
    id bigserial PRIMARY KEY,
    site text COLLATE "C" NOT NULL,
    study_instance_uid text COLLATE "C" NOT NULL,
    patient_id text COLLATE "C",
    patient_name text COLLATE "C",
    patient_name_fold text COLLATE "C",
    issuer_of_patient_id text COLLATE "C",
    patient_birth_date text COLLATE "C",
    patient_sex text COLLATE "C",
    study_date text COLLATE "C",
    study_time text COLLATE "C",
    accession_number text COLLATE "C",
    study_id text COLLATE "C",
    referring_physician_name text COLLATE "C",
    referring_physician_name_fold text COLLATE "C",
    study_description text COLLATE "C",
    modalities_in_study text COLLATE "C" NOT NULL DEFAULT '',
    sop_classes_in_study text COLLATE "C" NOT NULL DEFAULT '',
    number_of_series integer NOT NULL DEFAULT 0,
    number_of_instances integer NOT NULL DEFAULT 0,
    attributes bytea NOT NULL,
    CONSTRAINT studies_site_study_instance_uid_key UNIQUE (site, study_instance_uid)
) WITH (fillfactor = 80);
-- Keys viewers search by exactly or by prefix (`DOE^*`): text_pattern_ops serves both = and
-- a LIKE prefix whatever the collation. Dates are matched by range, so they keep the default.
CREATE INDEX studies_patient_id ON studies (site, patient_id text_pattern_ops);
CREATE INDEX studies_patient_name ON studies (site, patient_name text_pattern_ops);
CREATE INDEX studies_patient_name_fold ON studies (site, patient_name_fold text_pattern_ops);
CREATE INDEX studies_accession_number ON studies (site, accession_number text_pattern_ops);
CREATE INDEX studies_study_date ON studies (site, study_date);

CREATE TABLE series (
    id bigserial PRIMARY KEY,
    site text COLLATE "C" NOT NULL,
    study_instance_uid text COLLATE "C" NOT NULL,
    series_instance_uid text COLLATE "C" NOT NULL,
    modality text COLLATE "C",
    series_number integer,
    series_description text COLLATE "C",
    performed_procedure_step_start_date text COLLATE "C",
    performed_procedure_step_start_time text COLLATE "C",
    number_of_instances integer NOT NULL DEFAULT 0,
    attributes bytea NOT NULL,
    CONSTRAINT series_site_series_instance_uid_key UNIQUE (site, series_instance_uid)
) WITH (fillfactor = 80);
-- Series of a study (series-level search scoped by study, ModalitiesInStudy matching).
CREATE INDEX series_study ON series (site, study_instance_uid, modality);
CREATE INDEX series_modality ON series (site, modality);

CREATE TABLE instances (
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
    CONSTRAINT instances_site_sop_instance_uid_key UNIQUE (site, sop_instance_uid)
);
-- WADO streams a series in instance-number order; a study is fetched series by series.
CREATE INDEX instances_series ON instances (site, series_instance_uid, instance_number);
CREATE INDEX instances_study ON instances (site, study_instance_uid);
