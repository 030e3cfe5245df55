-- The sites of the store (issue 16): each its own DICOMweb root, optionally its own storage.
-- Rows of every other table already carry their site; this is the catalogue of names.
CREATE TABLE sites (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    storage_url TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    retain_years INTEGER,
    min_retain_years INTEGER
);
-- Sites that already hold data (every store before sites existed used the default site).
INSERT INTO sites (name, created)
    SELECT DISTINCT site, strftime('%s', 'now') FROM studies;
-- The enterprise root finds which sites hold a study UID.
CREATE INDEX studies_study_uid ON studies (study_instance_uid);
