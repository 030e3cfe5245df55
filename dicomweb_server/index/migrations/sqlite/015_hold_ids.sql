-- Legal hold ids are never reused: "hold N" in a 409, a log line or the audit trail names one
-- hold. A plain INTEGER PRIMARY KEY hands out max(id) + 1, so removing the newest hold and
-- adding another gave the removed one's id again; AUTOINCREMENT keeps the highest id ever
-- handed out (in sqlite_sequence). Ids removed before this migration above the highest
-- remaining one cannot be known any more. (PostgreSQL's bigserial sequence never goes back.)
CREATE TABLE legal_holds_numbered (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT,
    patient_id TEXT,
    issuer_of_patient_id TEXT,
    study_instance_uid TEXT,
    reason TEXT NOT NULL,
    created REAL NOT NULL,
    created_by TEXT NOT NULL
);
INSERT INTO legal_holds_numbered (id, site, patient_id, issuer_of_patient_id,
    study_instance_uid, reason, created, created_by)
SELECT id, site, patient_id, issuer_of_patient_id, study_instance_uid, reason, created,
    created_by FROM legal_holds ORDER BY id;
DROP TABLE legal_holds;
ALTER TABLE legal_holds_numbered RENAME TO legal_holds;
