-- The audit trail (issue 17): append-only. One row per request or roll-up, one row per study it
-- concerns (with the patient resolved when written), so "who saw patient X" is an index lookup.
CREATE TABLE audit_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time double precision NOT NULL,
    end_time double precision NOT NULL,
    subject text NOT NULL,
    kind text NOT NULL,
    display_name text NOT NULL DEFAULT '',
    client text NOT NULL DEFAULT '',
    action text NOT NULL,
    site text,
    outcome integer NOT NULL,
    request_id text NOT NULL DEFAULT '',
    detail text NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_end_time ON audit_events (end_time);
CREATE INDEX audit_events_subject ON audit_events (subject);
CREATE INDEX audit_events_display_name ON audit_events (display_name);
CREATE INDEX audit_events_site ON audit_events (site);

CREATE TABLE audit_studies (
    event_id bigint NOT NULL,
    end_time double precision NOT NULL,
    site text,
    study_instance_uid text NOT NULL,
    patient_id text,
    issuer_of_patient_id text
);
CREATE INDEX audit_studies_event ON audit_studies (event_id);
CREATE INDEX audit_studies_patient ON audit_studies (patient_id);
CREATE INDEX audit_studies_study ON audit_studies (study_instance_uid);

-- Nothing updates a record, nothing truncates the tables, and only the retention expiry
-- deletes: audit_expire() sets the transaction-local setting dicomweb.audit_expiry to its
-- cutoff, and the trigger lets a DELETE through only for a record that ended before it. A bug
-- elsewhere (or a stray statement in psql) cannot rewrite the trail.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    cutoff text := current_setting('dicomweb.audit_expiry', true);
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF cutoff IS NOT NULL AND cutoff <> '' AND OLD.end_time < cutoff::double precision THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit records are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_studies_append_only BEFORE UPDATE OR DELETE ON audit_studies
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_studies_no_truncate BEFORE TRUNCATE ON audit_studies
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- The retention expiry: up to `batch` records that ended before `cutoff` (and their study
-- rows), in the caller's transaction; returns how many records it removed.
CREATE FUNCTION audit_expire(cutoff double precision, batch integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    removed bigint;
BEGIN
    PERFORM set_config('dicomweb.audit_expiry', cutoff::text, true);
    WITH doomed AS (
        SELECT id FROM audit_events WHERE end_time < cutoff ORDER BY end_time LIMIT batch
    ), studies AS (
        DELETE FROM audit_studies WHERE event_id IN (SELECT id FROM doomed)
    ), gone AS (
        DELETE FROM audit_events WHERE id IN (SELECT id FROM doomed) RETURNING 1
    )
    SELECT count(*) INTO removed FROM gone;
    PERFORM set_config('dicomweb.audit_expiry', '', true);
    RETURN removed;
END
$$;
