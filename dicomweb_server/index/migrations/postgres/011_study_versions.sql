-- A version per study row (issue 22): a number no other write of any study row ever had, taken
-- from one sequence each time the row is inserted or updated. Every change to a study's
-- instances or series rewrites its study row in the same transaction (its counts and value
-- sets), so an unchanged version means an unchanged study: answers kept by it (metadata
-- documents, QIDO answers scoped to the study) are checked with one small query.
ALTER TABLE studies ADD COLUMN version bigint NOT NULL DEFAULT 0;
CREATE SEQUENCE study_versions;

-- An insert always takes a new number, also when it carries an old one (a restore puts a
-- study row back from its snapshot).
CREATE FUNCTION studies_versioned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := nextval('study_versions');
    RETURN NEW;
END
$$;
CREATE TRIGGER studies_versioned BEFORE INSERT OR UPDATE ON studies
    FOR EACH ROW EXECUTE FUNCTION studies_versioned();

-- The studies that exist: numbered by the trigger.
UPDATE studies SET version = 0;
