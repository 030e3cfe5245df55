-- Searches return rows in id order within one site (deterministic paging). The primary key
-- gives id order but not per site: with many sites in one store, a site's unfiltered page
-- (`/studies?limit=100&offset=2000`) would step over every other site's rows.
CREATE INDEX studies_site_id ON studies (site, id);
CREATE INDEX series_site_id ON series (site, id);
CREATE INDEX instances_site_id ON instances (site, id);
