-- The sites of the store (issue 16): each its own DICOMweb root, optionally its own storage.
-- Rows of every other table already carry their site; this is the catalogue of names.
CREATE TABLE sites (
    name text PRIMARY KEY,
    description text NOT NULL DEFAULT '',
    storage_url text NOT NULL DEFAULT '',
    created double precision NOT NULL,
    retain_years integer,
    min_retain_years integer
);
-- Sites that already hold data (every store before sites existed used the default site).
INSERT INTO sites (name, created)
    SELECT DISTINCT site, extract(epoch FROM now()) FROM studies;
-- The enterprise root finds which sites hold a study UID.
CREATE INDEX studies_study_uid ON studies (study_instance_uid);
