-- Hutong hub schema, version 1 (SQLite).
-- Raw ID numbers and names never appear here: persons are indexed by person_key (HMAC of the
-- normalised ID number) and the number and name are sealed together in sealed_pii.

-- One row per (province, record): the latest version the province sent. Retired records stay
-- as tombstones (retired_reason <> 0) so the audit trail and version rules keep working.
CREATE TABLE records (
    province           TEXT    NOT NULL,  -- 6-digit province code, from the writer's certificate
    record_id          TEXT    NOT NULL,  -- the province's own id
    version            INTEGER NOT NULL,
    content_hash       BLOB    NOT NULL,  -- digest of the record as sent; equal versions must match
    person_key         BLOB    NOT NULL,
    sealed_pii         BLOB    NOT NULL,  -- AES-256-GCM(id_number, name), key id prefixed
    gender             INTEGER NOT NULL,
    birth_date         INTEGER NOT NULL,  -- yyyymmdd
    hukou_division     TEXT    NOT NULL,
    residence_division TEXT    NOT NULL,
    household_id       TEXT    NOT NULL,
    enrollments        BLOB    NOT NULL,  -- packed enrollments, 24 bytes each
    active_programs    INTEGER NOT NULL,  -- bit mask of programmes with an ACTIVE enrollment
    updated_at_us      INTEGER NOT NULL,
    received_at_us     INTEGER NOT NULL,
    retired_reason     INTEGER NOT NULL DEFAULT 0,
    retired_at_us      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (province, record_id)
) WITHOUT ROWID;

-- Cross-province queries and duplicate detection look persons up by key.
CREATE INDEX records_by_person ON records (person_key);

CREATE TABLE households (
    province           TEXT    NOT NULL,
    household_id       TEXT    NOT NULL,
    version            INTEGER NOT NULL,
    content_hash       BLOB    NOT NULL,
    residence_division TEXT    NOT NULL,
    members            TEXT    NOT NULL,  -- "record_id<TAB>relation" lines
    income_fen         INTEGER NOT NULL,
    received_at_us     INTEGER NOT NULL,
    PRIMARY KEY (province, household_id)
) WITHOUT ROWID;

-- The acknowledgement of every applied batch: its idempotency record. A resend of a batch_id
-- returns exactly this, so no outcome is ever counted twice.
CREATE TABLE batches (
    province           TEXT    NOT NULL,
    node               TEXT    NOT NULL,
    batch_id           TEXT    NOT NULL,
    digest             BLOB    NOT NULL,
    applied_at_us      INTEGER NOT NULL,
    record_outcomes    BLOB    NOT NULL,
    household_outcomes BLOB    NOT NULL,
    record_rejections  TEXT    NOT NULL,
    household_rejections TEXT  NOT NULL,
    PRIMARY KEY (province, node, batch_id)
) WITHOUT ROWID;

-- Idempotency of other mutating calls (RetireRecords), keyed by request_id.
CREATE TABLE requests (
    province      TEXT    NOT NULL,
    node          TEXT    NOT NULL,
    request_id    TEXT    NOT NULL,
    method        TEXT    NOT NULL,
    digest        BLOB    NOT NULL,
    response      TEXT    NOT NULL,
    created_at_us INTEGER NOT NULL,
    PRIMARY KEY (province, node, request_id)
) WITHOUT ROWID;

-- Per-node counters, kept in the same transaction as the records they count.
CREATE TABLE node_state (
    province         TEXT    NOT NULL,
    node             TEXT    NOT NULL,
    last_batch_id    TEXT    NOT NULL DEFAULT '',
    last_batch_at_us INTEGER NOT NULL DEFAULT 0,
    batches_applied  INTEGER NOT NULL DEFAULT 0,
    created          INTEGER NOT NULL DEFAULT 0,
    updated          INTEGER NOT NULL DEFAULT 0,
    unchanged        INTEGER NOT NULL DEFAULT 0,
    stale            INTEGER NOT NULL DEFAULT 0,
    rejected         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (province, node)
) WITHOUT ROWID;

-- Per-province counters, so sync state never scans millions of rows.
CREATE TABLE province_state (
    province        TEXT    PRIMARY KEY,
    records_held    INTEGER NOT NULL DEFAULT 0,
    records_retired INTEGER NOT NULL DEFAULT 0,
    watermark_us    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Duplicate-enrollment findings: one row per (person, programme), reopened if it recurs.
CREATE TABLE findings (
    finding_id     TEXT    PRIMARY KEY,
    person_key     BLOB    NOT NULL,
    program        INTEGER NOT NULL,
    provinces      TEXT    NOT NULL,  -- comma-separated, sorted
    is_open        INTEGER NOT NULL,
    detected_at_us INTEGER NOT NULL,
    resolved_at_us INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE INDEX findings_by_person ON findings (person_key);
CREATE INDEX findings_open ON findings (is_open, program);
