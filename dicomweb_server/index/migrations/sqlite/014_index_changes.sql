-- QIDO answers kept by the state of the whole index (issue 22). The study version counter
-- (012) moves with every study row inserted or updated, and every change to a study's series
-- or instances rewrites its study row in the same transaction; a study row deleted did not
-- move it. Now it does, so the counter read before a search names everything that search can
-- find: an answer built after reading it may be kept by it (SQLite only: one writer at a
-- time commits in counter order; PostgreSQL's versions come from a sequence, taken before
-- commit).
CREATE TRIGGER studies_version_delete AFTER DELETE ON studies FOR EACH ROW
BEGIN
    UPDATE study_version_counter SET value = value + 1 WHERE id = 1;
END;
