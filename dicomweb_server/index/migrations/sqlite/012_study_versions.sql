-- A version per study row (issue 22): a number no other write of any study row ever had, taken
-- from one counter each time the row is inserted or updated. Every change to a study's
-- instances or series rewrites its study row in the same transaction (its counts and value
-- sets), so an unchanged version means an unchanged study: answers kept by it (metadata
-- documents, QIDO answers scoped to the study) are checked with one small query.
ALTER TABLE studies ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
CREATE TABLE study_version_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO study_version_counter (id, value) VALUES (1, 0);

-- An insert always takes a new number, also when it carries an old one (a restore puts a
-- study row back from its snapshot). The update trigger skips the trigger's own update.
CREATE TRIGGER studies_version_insert AFTER INSERT ON studies FOR EACH ROW
BEGIN
    UPDATE study_version_counter SET value = value + 1 WHERE id = 1;
    UPDATE studies SET version = (SELECT value FROM study_version_counter WHERE id = 1)
        WHERE id = NEW.id;
END;
CREATE TRIGGER studies_version_update AFTER UPDATE ON studies FOR EACH ROW
    WHEN NEW.version = OLD.version
BEGIN
    UPDATE study_version_counter SET value = value + 1 WHERE id = 1;
    UPDATE studies SET version = (SELECT value FROM study_version_counter WHERE id = 1)
        WHERE id = NEW.id;
END;

-- The studies that exist: numbered by the update trigger.
UPDATE studies SET version = 0;
