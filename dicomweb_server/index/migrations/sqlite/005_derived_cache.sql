-- Derived data (transcoded frames, thumbnails) kept in the blob store: its size and when it was
-- last used, so the least recently used entries can be evicted past DICOMWEB_CACHE_MAX_BYTES.
CREATE TABLE derived_cache (
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    last_used REAL NOT NULL
);
CREATE INDEX derived_cache_last_used ON derived_cache (last_used);
