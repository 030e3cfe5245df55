-- Events (issue 20), table for table as migrations/sqlite/007_events.sql.
--
-- Sequences in commit order: a bigserial hands out values at INSERT time, and transactions
-- commit in another order, so a reader paging by sequence could pass a value whose row
-- commits later and miss it. Instead every writing transaction, as its last statement before
-- COMMIT, increments the single row of `event_counter` and numbers its events from it. The
-- row lock is held until COMMIT, so the next writer numbers its events only after this one
-- has committed: visibility follows sequence order, sequences have no gaps, and `at` (the
-- latest event time) makes event times non-decreasing along the sequence.
CREATE TABLE event_counter (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    last bigint NOT NULL,
    at double precision NOT NULL
);
INSERT INTO event_counter (last, at) VALUES (0, 0);

CREATE TABLE events (
    sequence bigint PRIMARY KEY,
    type text COLLATE "C" NOT NULL,
    site text COLLATE "C" NOT NULL,
    study_instance_uid text COLLATE "C" NOT NULL,
    series_instance_uid text COLLATE "C",
    sop_instance_uid text COLLATE "C",
    instance_id bigint,
    modalities text COLLATE "C" NOT NULL DEFAULT '',
    number_of_series integer,
    number_of_instances integer,
    time double precision NOT NULL
);
CREATE INDEX events_site ON events (site, sequence);
CREATE INDEX events_time ON events (time);

-- Updated by every add transaction, after the study row and in the same (sorted) order.
CREATE TABLE study_activity (
    site text COLLATE "C" NOT NULL,
    study_instance_uid text COLLATE "C" NOT NULL,
    last_change double precision NOT NULL,
    generation bigint NOT NULL,
    announced bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site, study_instance_uid)
) WITH (fillfactor = 80);
CREATE INDEX study_activity_unannounced ON study_activity (last_change)
    WHERE generation > announced;

CREATE TABLE webhooks (
    id bigserial PRIMARY KEY,
    url text NOT NULL,
    secret_env text NOT NULL,
    site text COLLATE "C",
    events text NOT NULL,
    modalities text NOT NULL DEFAULT '',
    allow_private boolean NOT NULL DEFAULT false,
    cursor bigint NOT NULL,
    created double precision NOT NULL,
    delivered_pruned bigint NOT NULL DEFAULT 0,
    last_error text
);

-- Deliveries of one webhook are inserted under its row lock (fan-out and replay), so their
-- ids grow in commit order within a webhook: "oldest first" in a study is "lowest id".
CREATE TABLE webhook_deliveries (
    id bigserial PRIMARY KEY,
    webhook_id bigint NOT NULL,
    sequence bigint NOT NULL,
    site text COLLATE "C" NOT NULL,
    study_instance_uid text COLLATE "C" NOT NULL,
    state text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    created double precision NOT NULL,
    next_attempt double precision NOT NULL,
    lease_until double precision,
    lease_token text,
    last_error text,
    finished double precision
) WITH (fillfactor = 80);
CREATE INDEX webhook_deliveries_pending
    ON webhook_deliveries (webhook_id, site, study_instance_uid, id) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_token ON webhook_deliveries (lease_token)
    WHERE lease_token IS NOT NULL;
CREATE INDEX webhook_deliveries_state ON webhook_deliveries (webhook_id, state);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished)
    WHERE state = 'delivered';
