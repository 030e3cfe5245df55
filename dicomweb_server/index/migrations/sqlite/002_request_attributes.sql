-- Sequence matching on the Request Attributes Sequence (PS3.18 Table 10.6.1-5): the values of
-- every item, joined by backslash.
ALTER TABLE series ADD COLUMN requested_procedure_id TEXT;
ALTER TABLE series ADD COLUMN scheduled_procedure_step_id TEXT;
