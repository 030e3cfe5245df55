-- Searches return rows in id order within one site (deterministic paging). Without an index
-- that starts (site, id), an unfiltered page (`/studies?limit=100&offset=2000`) sorted every
-- study of the site in a temporary B-tree first; with it, the page is a walk along the index.
CREATE INDEX studies_site_id ON studies (site, id);
CREATE INDEX series_site_id ON series (site, id);
CREATE INDEX instances_site_id ON instances (site, id);
