-- Hutong hub schema, version 2 (PostgreSQL): the tamper-evident exchange log. Equivalent to
-- migrations/sqlite/0002_audit.sql (same columns in the same order, same index names).
-- Entries are the leaves of an RFC 9162 Merkle tree, in the order of seq (0, 1, 2, ... with no
-- gap: the writer assigns seq in commit order, inside the transaction that holds the call's own
-- writes). Nothing here is ever deleted or updated, except the one-row tree state and the
-- staging table audit_persons_recent.
--
-- Identity columns: none. audit_entries.seq is assigned by the writer (never a sequence: a
-- sequence leaves gaps on rollback, and the tree needs none); audit_tree.id is the constant 1;
-- audit_checkpoints.size is the tree size the checkpoint signs.
--
-- Not partitioned: the log is append-only and read by ranges of seq across all provinces
-- (proofs, exports, searches from an index onward); its index on seq grows only at the right
-- edge, so inserts touch the same few pages however large it gets.

CREATE TABLE audit_entries (
    seq       bigint PRIMARY KEY,      -- leaf index
    time_us   bigint NOT NULL,         -- when the call was answered (from the entry)
    province  text COLLATE "C"   NOT NULL,         -- the caller's province ('' if unauthenticated)
    method    text COLLATE "C"   NOT NULL,         -- full RPC name, /hutong.v1.AssistanceQueryService/CheckEnrollment
    purpose   text COLLATE "C"   NOT NULL,
    outcome   text COLLATE "C"   NOT NULL,         -- gRPC status code name
    entry     bytea  NOT NULL,         -- canonical entry bytes (gateway.audit.entry)
    leaf_hash bytea  NOT NULL,         -- H(0x00 || entry)
    -- Entries touching many persons (a sync batch: thousands) get a Bloom filter of their person
    -- keys instead of rows in audit_persons: a random-key index row per record would cost the
    -- sync path as much again as the records' own person index. The filter's probes are
    -- BLAKE2b-based, which PostgreSQL cannot compute: searches test it in the client.
    persons_bloom bytea
);
-- The primary key serves the tree's reads by range of seq (proofs, exports, the start-up check)
-- and the search's seq >= after AND seq < size ... ORDER BY seq.

-- Auditors look at a time window (search by since/until) ...
CREATE INDEX audit_by_time ON audit_entries (time_us);
-- ... and often at one province (search by province, in seq order from an index onward).
CREATE INDEX audit_by_province ON audit_entries (province, seq);

-- Person keys of entries touching few persons (queries, retirements): who looked at whom.
-- Keys are HMACs, so each insert would land on a random page of a large index. New rows go to
-- audit_persons_recent (append-only, no index) and are folded into audit_persons in key order
-- every 65,536 rows, in the transaction that crosses the mark: the same pages take many rows
-- at once (measured on SQLite at 1,000,000 entries: appends 40 per cent faster; in PostgreSQL
-- the sorted fold also saves the full-page images a random insert writes to the WAL after each
-- checkpoint). Searches read both tables. The fold empties audit_persons_recent with DELETE,
-- not TRUNCATE (which would lock out concurrent readers); autovacuum reclaims the space.
CREATE TABLE audit_persons (
    person_key bytea  NOT NULL,
    seq        bigint NOT NULL,
    -- Serves the search by person: seq IN (SELECT seq ... WHERE person_key = $1 AND seq >= $2).
    PRIMARY KEY (person_key, seq)
);

-- No index: at most 65,536 rows, scanned by the search by person.
CREATE TABLE audit_persons_recent (
    person_key bytea  NOT NULL,
    seq        bigint NOT NULL
);

-- Roots of perfect subtrees of 2^level leaves starting at `start`, for level >= 8 (256 leaves):
-- a proof needs O(log n) subtree hashes; those below level 8 are hashed from at most 256 leaf
-- hashes, those above are read here (by primary key). One row per 128 entries.
CREATE TABLE audit_subtrees (
    level bigint NOT NULL,
    start bigint NOT NULL,
    hash  bytea  NOT NULL,
    PRIMARY KEY (level, start)
);

-- The compact range of the tree (roots of the perfect subtrees covering [0, size)), updated in
-- the same transaction as the entries, so a restart resumes without reading every leaf.
CREATE TABLE audit_tree (
    id    bigint PRIMARY KEY CHECK (id = 1),
    size  bigint NOT NULL,
    peaks bytea  NOT NULL              -- concatenated hashes, leftmost first
);
INSERT INTO audit_tree VALUES (1, 0, ''::bytea);

-- Signed checkpoints (C2SP signed notes), at most one per tree size. The primary key serves the
-- checkpoint of one size, the newest (ORDER BY size DESC LIMIT 1) and the export's ascending list.
CREATE TABLE audit_checkpoints (
    size    bigint PRIMARY KEY,
    time_us bigint NOT NULL,
    note    text COLLATE "C"   NOT NULL
);
