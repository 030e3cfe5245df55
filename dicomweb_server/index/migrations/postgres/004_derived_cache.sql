-- Derived data (transcoded frames, thumbnails) kept in the blob store: its size and when it was
-- last used, so the least recently used entries can be evicted past DICOMWEB_CACHE_MAX_BYTES.
CREATE TABLE derived_cache (
    key text PRIMARY KEY,
    size bigint NOT NULL,
    last_used double precision NOT NULL
);
CREATE INDEX derived_cache_last_used ON derived_cache (last_used);
