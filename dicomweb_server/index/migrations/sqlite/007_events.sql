-- Events (issue 20). `events` is the outbox: every add transaction writes one row per created
-- instance in the same transaction (and a delete will write its own), so a crash loses none.
-- SQLite has one writer at a time, so AUTOINCREMENT sequences are in commit order; `time`
-- never decreases along the sequence (a window of the change feed that has ended is final).
-- `modalities` (backslash-joined) and the counts serve webhook filters and study.stable.
CREATE TABLE events (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    site TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT,
    sop_instance_uid TEXT,
    instance_id INTEGER,
    modalities TEXT NOT NULL DEFAULT '',
    number_of_series INTEGER,
    number_of_instances INTEGER,
    time REAL NOT NULL
);
CREATE INDEX events_site ON events (site, sequence);
CREATE INDEX events_time ON events (time);

-- One row per study with adds not yet announced as study.stable: each add transaction sets
-- last_change and bumps generation; the announcer sets announced = generation in the
-- transaction that writes the study.stable event.
CREATE TABLE study_activity (
    site TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    last_change REAL NOT NULL,
    generation INTEGER NOT NULL,
    announced INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (site, study_instance_uid)
);
CREATE INDEX study_activity_unannounced ON study_activity (last_change)
    WHERE generation > announced;

-- Webhook subscriptions. The secret is never stored: only the name of the environment
-- variable that holds it. `cursor` is the last event sequence fanned out into deliveries.
CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    secret_env TEXT NOT NULL,
    site TEXT,
    events TEXT NOT NULL,
    modalities TEXT NOT NULL DEFAULT '',
    allow_private INTEGER NOT NULL DEFAULT 0,
    cursor INTEGER NOT NULL,
    created REAL NOT NULL,
    delivered_pruned INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);

-- One row per event to deliver to one webhook. Rows of one (webhook, site, study) go out in
-- id order; a claim leases a run of them (lease_token, lease_until) to one worker.
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    site TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    next_attempt REAL NOT NULL,
    lease_until REAL,
    lease_token TEXT,
    last_error TEXT,
    finished REAL
);
CREATE INDEX webhook_deliveries_pending
    ON webhook_deliveries (webhook_id, site, study_instance_uid, id) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_token ON webhook_deliveries (lease_token)
    WHERE lease_token IS NOT NULL;
CREATE INDEX webhook_deliveries_state ON webhook_deliveries (webhook_id, state);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished)
    WHERE state = 'delivered';
