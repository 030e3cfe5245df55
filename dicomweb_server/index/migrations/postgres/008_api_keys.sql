-- API keys (issue 17): only a hash of each secret; names unique forever (revoked ones too).
CREATE TABLE api_keys (
    key_id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    secret_hash text NOT NULL,
    grants text NOT NULL,
    created double precision NOT NULL,
    expires double precision,
    revoked double precision
);
