-- QIDO on any attribute (issue 15). What AI tools select cases by become series columns (the
-- General Series and General Equipment modules are series-level, PS3.3 C.7.3.1, C.7.5.1),
-- and the keys viewers and those tools filter on get B-tree indexes, like PatientID's.
ALTER TABLE series ADD COLUMN body_part_examined TEXT;
ALTER TABLE series ADD COLUMN protocol_name TEXT;
ALTER TABLE series ADD COLUMN manufacturer TEXT;
ALTER TABLE series ADD COLUMN manufacturer_model_name TEXT;
ALTER TABLE series ADD COLUMN station_name TEXT;
ALTER TABLE series ADD COLUMN institution_name TEXT;

-- ManufacturerModelName was not among the attributes a series row returns: add it to the rows
-- stored before, from the series' first instance that has it, as the aggregate writer merges
-- a later instance's attributes (index/rows.py merge_attributes). The byte search skips the
-- instances without it before any JSON is parsed.
UPDATE series SET attributes = CAST(json_set(CAST(attributes AS TEXT), '$."00081090"', json((
    SELECT json_extract(CAST(i.metadata AS TEXT), '$."00081090"') FROM instances i
    WHERE i.site = series.site AND i.series_instance_uid = series.series_instance_uid
        AND instr(i.metadata, CAST('"00081090"' AS BLOB)) > 0
        AND json_type(CAST(i.metadata AS TEXT), '$."00081090"') = 'object'
    ORDER BY i.id LIMIT 1
))) AS BLOB)
WHERE json_type(CAST(attributes AS TEXT), '$."00081090"') IS NULL
    AND EXISTS (
        SELECT 1 FROM instances i
        WHERE i.site = series.site AND i.series_instance_uid = series.series_instance_uid
            AND instr(i.metadata, CAST('"00081090"' AS BLOB)) > 0
            AND json_type(CAST(i.metadata AS TEXT), '$."00081090"') = 'object'
    );

-- The new columns of rows stored before, from the series' stored attributes (DICOM JSON):
-- the first value, trimmed, as domain/part10.py extracts a column at ingest.
UPDATE series SET
    body_part_examined = trim(json_extract(CAST(attributes AS TEXT), '$."00180015".Value[0]')),
    protocol_name = trim(json_extract(CAST(attributes AS TEXT), '$."00181030".Value[0]')),
    manufacturer = trim(json_extract(CAST(attributes AS TEXT), '$."00080070".Value[0]')),
    manufacturer_model_name = trim(json_extract(CAST(attributes AS TEXT), '$."00081090".Value[0]')),
    station_name = trim(json_extract(CAST(attributes AS TEXT), '$."00081010".Value[0]')),
    institution_name = trim(json_extract(CAST(attributes AS TEXT), '$."00080080".Value[0]'));

CREATE INDEX series_series_description ON series (site, series_description);
CREATE INDEX series_body_part_examined ON series (site, body_part_examined);
CREATE INDEX series_protocol_name ON series (site, protocol_name);
CREATE INDEX series_manufacturer ON series (site, manufacturer);
CREATE INDEX series_manufacturer_model_name ON series (site, manufacturer_model_name);
CREATE INDEX series_station_name ON series (site, station_name);
CREATE INDEX series_institution_name ON series (site, institution_name);
CREATE INDEX series_performed_procedure_step_start_date
    ON series (site, performed_procedure_step_start_date);
CREATE INDEX studies_referring_physician_name ON studies (site, referring_physician_name);
CREATE INDEX studies_referring_physician_name_fold
    ON studies (site, referring_physician_name_fold);
CREATE INDEX studies_study_description ON studies (site, study_description);
