-- Hutong hub schema, version 1 (PostgreSQL). Equivalent to migrations/sqlite/0001_init.sql: the
-- same tables, columns in the same order (the store inserts by position), the same index names.
-- Raw ID numbers and names never appear here: persons are indexed by person_key (HMAC of the
-- normalised ID number) and the number and name are sealed together in sealed_pii.
--
-- Identity columns: none in this file.
--
-- Types: SQLite INTEGER is bigint (times are microseconds since the epoch and overflow int4;
-- flags the store writes as 0/1 stay integers, not boolean), BLOB is bytea, TEXT is text. The
-- schema version is recorded by the migration runner (table schema_migrations), not here.
-- Every text column is COLLATE "C": ids and codes sort and compare bytewise, as in SQLite,
-- whatever the database's locale (and C comparisons are the cheapest).

-- One row per (province, record): the latest version the province sent. Retired records stay
-- as tombstones (retired_reason <> 0) so the audit trail and version rules keep working.
--
-- Partitioned by province (one partition per province-level division of GB/T 2260, and a
-- DEFAULT partition for any other code): every write and every primary-key read names the
-- province, so it touches one partition; and a province's data can be bulk-loaded, vacuumed,
-- analysed, dumped (pg_dump -t records_p110000), truncated and re-synced on its own, without
-- touching, locking or bloating the other 34 provinces' rows and indexes.
CREATE TABLE records (
    province           text COLLATE "C"   NOT NULL,  -- 6-digit province code, from the writer's certificate
    record_id          text COLLATE "C"   NOT NULL,  -- the province's own id
    version            bigint NOT NULL,
    content_hash       bytea  NOT NULL,  -- digest of the record as sent; equal versions must match
    person_key         bytea  NOT NULL,
    sealed_pii         bytea  NOT NULL,  -- AES-256-GCM(id_number, name), key id prefixed
    gender             bigint NOT NULL,
    birth_date         bigint NOT NULL,  -- yyyymmdd
    hukou_division     text COLLATE "C"   NOT NULL,
    residence_division text COLLATE "C"   NOT NULL,
    household_id       text COLLATE "C"   NOT NULL,
    enrollments        bytea  NOT NULL,  -- packed enrollments, 24 bytes each
    active_programs    bigint NOT NULL,  -- bit mask of programmes with an ACTIVE enrollment
    updated_at_us      bigint NOT NULL,
    received_at_us     bigint NOT NULL,
    retired_reason     bigint NOT NULL DEFAULT 0,
    retired_at_us      bigint NOT NULL DEFAULT 0,
    -- Includes the partition key, as PostgreSQL requires of a unique index on a partitioned table.
    -- Serves the batch path (held records by province and record id IN (...), the upsert's
    -- ON CONFLICT (province, record_id)), retirements, the monitoring rules' member lookups and
    -- linkage's reads of one record: each prunes to the province's partition.
    PRIMARY KEY (province, record_id)
) PARTITION BY LIST (province);

-- Cross-province queries and duplicate detection look persons up by key (duplicate findings,
-- CheckEnrollment, risk signals, retirements told elsewhere, linkage candidates, lineage).
-- On the partitioned table this is a partitioned index: one B-tree per partition. The price: a
-- lookup by person_key alone (the common case: the person may be held anywhere) cannot be
-- pruned and probes every partition's index, 35 probes of a small B-tree instead of one probe
-- of a large one, each a few cached pages (tens of microseconds in all). Lookups that also name
-- the province probe one. It is still chosen for the per-province operations above: a
-- province's initial load inserts its random HMAC keys into its own index, a fraction of the
-- size of one national index and so far more of it in cache; VACUUM, ANALYZE and pg_dump work
-- one province at a time; and dropping or re-syncing a province is a TRUNCATE (or DETACH) of
-- its partition rather than millions of row and index deletions.
CREATE INDEX records_by_person ON records (person_key);

-- Partitioned like records, for the same per-province load, vacuum, dump and re-sync; reads
-- (the batch path, the monitoring rules, linkage's household co-members) go by primary key.
CREATE TABLE households (
    province           text COLLATE "C"   NOT NULL,
    household_id       text COLLATE "C"   NOT NULL,
    version            bigint NOT NULL,
    content_hash       bytea  NOT NULL,
    residence_division text COLLATE "C"   NOT NULL,
    members            text COLLATE "C"   NOT NULL,  -- "record_id<TAB>relation" lines
    income_fen         bigint NOT NULL,
    received_at_us     bigint NOT NULL,
    PRIMARY KEY (province, household_id)
) PARTITION BY LIST (province);

-- One partition of each table per province-level division code (GB/T 2260), named
-- records_p110000 and households_p110000 and so on; their primary-key and person-key indexes
-- are created with them from the parents' definitions.
DO $$
DECLARE
    code text;
BEGIN
    FOREACH code IN ARRAY ARRAY[
        '110000', '120000', '130000', '140000', '150000', '210000', '220000', '230000',
        '310000', '320000', '330000', '340000', '350000', '360000', '370000', '410000',
        '420000', '430000', '440000', '450000', '460000', '500000', '510000', '520000',
        '530000', '540000', '610000', '620000', '630000', '640000', '650000', '710000',
        '810000', '820000'
    ] LOOP
        EXECUTE 'CREATE TABLE ' || quote_ident('records_p' || code)
             || ' PARTITION OF records FOR VALUES IN (' || quote_literal(code) || ')';
        EXECUTE 'CREATE TABLE ' || quote_ident('households_p' || code)
             || ' PARTITION OF households FOR VALUES IN (' || quote_literal(code) || ')';
    END LOOP;
END
$$;

-- Any other province code (none is expected: codes come from the writers' certificates). A row
-- here blocks creating a partition for its code until the row is moved out.
CREATE TABLE records_pdefault PARTITION OF records DEFAULT;
CREATE TABLE households_pdefault PARTITION OF households DEFAULT;

-- The acknowledgement of every applied batch: its idempotency record. A resend of a batch_id
-- returns exactly this, so no outcome is ever counted twice. Read by primary key only.
CREATE TABLE batches (
    province           text COLLATE "C"   NOT NULL,
    node               text COLLATE "C"   NOT NULL,
    batch_id           text COLLATE "C"   NOT NULL,
    digest             bytea  NOT NULL,
    applied_at_us      bigint NOT NULL,
    record_outcomes    bytea  NOT NULL,
    household_outcomes bytea  NOT NULL,
    record_rejections  text COLLATE "C"   NOT NULL,
    household_rejections text COLLATE "C" NOT NULL,
    PRIMARY KEY (province, node, batch_id)
);

-- Idempotency of other mutating calls (RetireRecords, ReportOutcome, SubmitSignals, review
-- decisions, splits), keyed by request_id. Read by primary key only.
CREATE TABLE requests (
    province      text COLLATE "C"   NOT NULL,
    node          text COLLATE "C"   NOT NULL,
    request_id    text COLLATE "C"   NOT NULL,
    method        text COLLATE "C"   NOT NULL,
    digest        bytea  NOT NULL,
    response      text COLLATE "C"   NOT NULL,
    created_at_us bigint NOT NULL,
    PRIMARY KEY (province, node, request_id)
);

-- Per-node counters, kept in the same transaction as the records they count.
CREATE TABLE node_state (
    province         text COLLATE "C"   NOT NULL,
    node             text COLLATE "C"   NOT NULL,
    last_batch_id    text COLLATE "C"   NOT NULL DEFAULT '',
    last_batch_at_us bigint NOT NULL DEFAULT 0,
    batches_applied  bigint NOT NULL DEFAULT 0,
    created          bigint NOT NULL DEFAULT 0,
    updated          bigint NOT NULL DEFAULT 0,
    unchanged        bigint NOT NULL DEFAULT 0,
    stale            bigint NOT NULL DEFAULT 0,
    rejected         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (province, node)
);

-- Per-province counters, so sync state never scans millions of rows.
CREATE TABLE province_state (
    province        text COLLATE "C"   PRIMARY KEY,
    records_held    bigint NOT NULL DEFAULT 0,
    records_retired bigint NOT NULL DEFAULT 0,
    watermark_us    bigint NOT NULL DEFAULT 0
);

-- Duplicate-enrollment findings: one row per (person, programme), reopened if it recurs.
-- finding_id (the primary key) serves the updates of one finding.
CREATE TABLE findings (
    finding_id     text COLLATE "C"   PRIMARY KEY,
    person_key     bytea  NOT NULL,
    program        bigint NOT NULL,
    provinces      text COLLATE "C"   NOT NULL,  -- comma-separated, sorted
    is_open        bigint NOT NULL,
    detected_at_us bigint NOT NULL,
    resolved_at_us bigint NOT NULL DEFAULT 0
);

-- A person's findings: FindingsOf, and the refresh of findings after a batch, a retirement or a
-- link (person_key IN (...), with and without is_open=1).
CREATE INDEX findings_by_person ON findings (person_key);
-- Hub statistics: open findings counted by programme (is_open=1 GROUP BY program), resolved
-- ones counted (is_open=0).
CREATE INDEX findings_open ON findings (is_open, program);
