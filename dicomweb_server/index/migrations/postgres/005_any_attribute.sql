-- QIDO on any attribute (issue 15). What AI tools select cases by become series columns (the
-- General Series and General Equipment modules are series-level, PS3.3 C.7.3.1, C.7.5.1),
-- and the keys viewers and those tools filter on get B-tree indexes, like PatientID's.
ALTER TABLE series
    ADD COLUMN body_part_examined text COLLATE "C",
    ADD COLUMN protocol_name text COLLATE "C",
    ADD COLUMN manufacturer text COLLATE "C",
    ADD COLUMN manufacturer_model_name text COLLATE "C",
    ADD COLUMN station_name text COLLATE "C",
    ADD COLUMN institution_name text COLLATE "C";

-- Stored DICOM JSON (bytea, written by orjson: always UTF-8) as json, for matching keys that
-- have no column (index/sql_json.py). json rather than jsonb: matching reads a few values of
-- each document once, and json skips building jsonb's tree (a 1.5 kB instance's metadata
-- parsed in half the time). Neither type can give out U+0000, which orjson writes as the
-- escape \u0000 (a NUL inside a value, broken or hostile input): it becomes \ufffd, so that
-- extracting such a value cannot fail every unindexed search. Replacing one six-character
-- escape by another keeps any JSON valid, even where the backslash is an escaped one's
-- second. STABLE like convert_from and referring to its argument once, so the planner
-- inlines it into the calling expression.
CREATE FUNCTION dicomweb_json(document bytea) RETURNS json
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT replace(convert_from(document, 'UTF8'), '\u0000', '\ufffd')::json $$;

-- ManufacturerModelName was not among the attributes a series row returns: add it to the rows
-- stored before, from the series' first instance that has it, as the aggregate writer merges
-- a later instance's attributes (index/rows.py merge_attributes). The element's text goes in
-- front of the stored object's, both as orjson wrote them (json's -> keeps the source text).
-- The byte search skips the instances without it before any JSON is parsed.
UPDATE series s
SET attributes = convert_to(
    '{"00081090":' || m.element::text
        || CASE WHEN length(s.attributes) > 2 THEN ',' ELSE '' END
        || substr(convert_from(s.attributes, 'UTF8'), 2),
    'UTF8'
)
FROM (
    SELECT DISTINCT ON (i.site, i.series_instance_uid)
        i.site, i.series_instance_uid, dicomweb_json(i.metadata) -> '00081090' AS element
    FROM instances i
    WHERE position('"00081090"'::bytea IN i.metadata) > 0
        AND json_typeof(dicomweb_json(i.metadata) -> '00081090') = 'object'
    ORDER BY i.site, i.series_instance_uid, i.id
) m
WHERE s.site = m.site AND s.series_instance_uid = m.series_instance_uid
    AND (dicomweb_json(s.attributes) -> '00081090') IS NULL;

-- The new columns of rows stored before, from the series' stored attributes (DICOM JSON):
-- the first value, trimmed, as domain/part10.py extracts a column at ingest.
UPDATE series s SET
    body_part_examined = btrim(x.j -> '00180015' -> 'Value' ->> 0),
    protocol_name = btrim(x.j -> '00181030' -> 'Value' ->> 0),
    manufacturer = btrim(x.j -> '00080070' -> 'Value' ->> 0),
    manufacturer_model_name = btrim(x.j -> '00081090' -> 'Value' ->> 0),
    station_name = btrim(x.j -> '00081010' -> 'Value' ->> 0),
    institution_name = btrim(x.j -> '00080080' -> 'Value' ->> 0)
FROM (SELECT id, dicomweb_json(attributes)::jsonb AS j FROM series) x
WHERE s.id = x.id
    AND x.j ?| ARRAY['00180015', '00181030', '00080070', '00081090', '00081010', '00080080'];

CREATE INDEX series_series_description ON series (site, series_description text_pattern_ops);
CREATE INDEX series_body_part_examined ON series (site, body_part_examined text_pattern_ops);
CREATE INDEX series_protocol_name ON series (site, protocol_name text_pattern_ops);
CREATE INDEX series_manufacturer ON series (site, manufacturer text_pattern_ops);
CREATE INDEX series_manufacturer_model_name
    ON series (site, manufacturer_model_name text_pattern_ops);
CREATE INDEX series_station_name ON series (site, station_name text_pattern_ops);
CREATE INDEX series_institution_name ON series (site, institution_name text_pattern_ops);
CREATE INDEX series_performed_procedure_step_start_date
    ON series (site, performed_procedure_step_start_date);
CREATE INDEX studies_referring_physician_name
    ON studies (site, referring_physician_name text_pattern_ops);
CREATE INDEX studies_referring_physician_name_fold
    ON studies (site, referring_physician_name_fold text_pattern_ops);
CREATE INDEX studies_study_description ON studies (site, study_description text_pattern_ops);
