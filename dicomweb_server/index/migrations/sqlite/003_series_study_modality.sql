-- ModalitiesInStudy matching is an EXISTS over a study's series by modality: index exactly that
-- (the bench's "week + ModalitiesInStudy" query took 2.5 s on 30k instances without it).
CREATE INDEX series_study_modality ON series (site, study_instance_uid, modality);
