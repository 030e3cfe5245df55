-- The audit trail (issue 17): append-only. One row per request or roll-up, one row per study it
-- concerns (with the patient resolved when written), so "who saw patient X" is an index lookup.
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    end_time REAL NOT NULL,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    client TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL,
    site TEXT,
    outcome INTEGER NOT NULL,
    request_id TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_end_time ON audit_events (end_time);
CREATE INDEX audit_events_subject ON audit_events (subject);
CREATE INDEX audit_events_display_name ON audit_events (display_name);
CREATE INDEX audit_events_site ON audit_events (site);

CREATE TABLE audit_studies (
    event_id INTEGER NOT NULL,
    end_time REAL NOT NULL,
    site TEXT,
    study_instance_uid TEXT NOT NULL,
    patient_id TEXT,
    issuer_of_patient_id TEXT
);
CREATE INDEX audit_studies_event ON audit_studies (event_id);
CREATE INDEX audit_studies_patient ON audit_studies (patient_id);
CREATE INDEX audit_studies_study ON audit_studies (study_instance_uid);

-- Nothing updates a record, and only the retention expiry deletes one. The expiry, inside its
-- own BEGIN IMMEDIATE transaction, inserts a marker row naming its cutoff, deletes records that
-- ended before it, and deletes the marker before COMMIT: no other connection ever sees the
-- marker, and even the expiry cannot delete a record newer than the cutoff it declared.
CREATE TABLE audit_expiry (before REAL NOT NULL);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only: UPDATE refused');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN NOT EXISTS (SELECT 1 FROM audit_expiry WHERE OLD.end_time < audit_expiry.before)
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only: DELETE refused outside the expiry');
END;
CREATE TRIGGER audit_studies_no_update BEFORE UPDATE ON audit_studies
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only: UPDATE refused');
END;
CREATE TRIGGER audit_studies_no_delete BEFORE DELETE ON audit_studies
WHEN NOT EXISTS (SELECT 1 FROM audit_expiry WHERE OLD.end_time < audit_expiry.before)
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only: DELETE refused outside the expiry');
END;
