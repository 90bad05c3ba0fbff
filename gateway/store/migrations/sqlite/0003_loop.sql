-- Hutong hub schema, version 3 (SQLite): the closed loop — events pushed to provinces, and what
-- the provinces reported back. Events are written in the transaction of the change that raised
-- them, so an event exists if and only if its cause was committed.

CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order of delivery (a province's cursor)
    province       TEXT    NOT NULL,                   -- the province that must act
    event_id       TEXT    NOT NULL UNIQUE,            -- the idempotency key the province sees
    kind           INTEGER NOT NULL,                   -- hutong.v1.EventKind
    subject        TEXT    NOT NULL,                   -- the matter: every province pushed one matter shares it
    body           TEXT    NOT NULL,                   -- the event's fields (protobuf JSON mapping)
    created_at_us  INTEGER NOT NULL,
    respond_by_us  INTEGER NOT NULL,
    acked_at_us    INTEGER NOT NULL DEFAULT 0,         -- first acknowledgement by a node of the province
    outcome        INTEGER NOT NULL DEFAULT 0,         -- hutong.v1.EventOutcome, 0 until reported
    outcome_reason TEXT    NOT NULL DEFAULT '',
    outcome_at_us  INTEGER NOT NULL DEFAULT 0,
    outcome_node   TEXT    NOT NULL DEFAULT '',
    overdue_at_us  INTEGER NOT NULL DEFAULT 0,         -- when it was found overdue and escalated
    sealed_pii     BLOB                                -- a signal's ID number and name, sealed like records'
);
CREATE INDEX events_by_province ON events (province, seq);
CREATE INDEX events_by_subject ON events (subject);
CREATE INDEX events_due ON events (respond_by_us) WHERE outcome = 0 AND overdue_at_us = 0;

-- Per subscribing node: every event of its province up to this sequence was acknowledged (events carry one
-- acknowledgement each, by whichever node of the province delivered them); where an empty cursor resumes.
CREATE TABLE event_cursors (
    province TEXT    NOT NULL,
    node     TEXT    NOT NULL,
    cursor   INTEGER NOT NULL,
    PRIMARY KEY (province, node)
) WITHOUT ROWID;

-- Risk signals received from departments, once each per department.
CREATE TABLE signals (
    source         TEXT    NOT NULL,  -- the department's node URI
    signal_id      TEXT    NOT NULL,
    kind           INTEGER NOT NULL,
    person_key     BLOB    NOT NULL,
    provinces      TEXT    NOT NULL,  -- where it was pushed, comma-separated
    received_at_us INTEGER NOT NULL,
    PRIMARY KEY (source, signal_id)
) WITHOUT ROWID;

-- Monitoring-rule matches already pushed: a rule fires once per household until it stops matching.
CREATE TABLE monitoring_hits (
    rule_id      TEXT    NOT NULL,
    province     TEXT    NOT NULL,
    household_id TEXT    NOT NULL,
    fired_at_us  INTEGER NOT NULL,
    PRIMARY KEY (rule_id, province, household_id)
) WITHOUT ROWID;

-- Every set of monitoring rules the hub has run with (a change is also an audit entry).
CREATE TABLE monitoring_rules (
    digest       BLOB    PRIMARY KEY,
    loaded_at_us INTEGER NOT NULL,
    rules        TEXT    NOT NULL
) WITHOUT ROWID;
