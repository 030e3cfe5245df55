-- API keys (issue 17): only a hash of each secret; names unique forever (revoked ones too).
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    grants TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    revoked REAL
);
