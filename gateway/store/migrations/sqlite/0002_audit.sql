-- Hutong hub schema, version 2 (SQLite): the tamper-evident exchange log.
-- Entries are the leaves of an RFC 9162 Merkle tree, in the order of seq (0, 1, 2, ... with no
-- gap: the writer assigns seq in commit order, inside the transaction that holds the call's own
-- writes). Nothing here is ever deleted or updated, except the one-row tree state.

CREATE TABLE audit_entries (
    seq       INTEGER PRIMARY KEY,   -- leaf index
    time_us   INTEGER NOT NULL,      -- when the call was answered (from the entry)
    province  TEXT    NOT NULL,      -- the caller's province ('' if unauthenticated)
    method    TEXT    NOT NULL,      -- full RPC name, /hutong.v1.AssistanceQueryService/CheckEnrollment
    purpose   TEXT    NOT NULL,
    outcome   TEXT    NOT NULL,      -- gRPC status code name
    entry     BLOB    NOT NULL,      -- canonical entry bytes (gateway.audit.entry)
    leaf_hash BLOB    NOT NULL,      -- H(0x00 || entry)
    -- Entries touching many persons (a sync batch: thousands) get a Bloom filter of their person
    -- keys instead of rows in audit_persons: a random-key index row per record would cost the
    -- sync path as much again as the records' own person index.
    persons_bloom BLOB
);

-- Auditors look at a time window, and often at one province.
CREATE INDEX audit_by_time ON audit_entries (time_us);
CREATE INDEX audit_by_province ON audit_entries (province, seq);

-- Person keys of entries touching few persons (queries, retirements): who looked at whom.
-- Keys are HMACs, so each insert would land on a random page of a large index. New rows go to
-- audit_persons_recent (append-only, no index) and are folded into audit_persons in key order
-- every 65,536 rows, in the transaction that crosses the mark: the same pages take many rows
-- at once (measured at 1,000,000 entries: appends 40 % faster). Searches read both tables.
CREATE TABLE audit_persons (
    person_key BLOB    NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (person_key, seq)
) WITHOUT ROWID;

CREATE TABLE audit_persons_recent (
    person_key BLOB    NOT NULL,
    seq        INTEGER NOT NULL
);

-- Roots of perfect subtrees of 2^level leaves starting at `start`, for level >= 8 (256 leaves):
-- a proof needs O(log n) subtree hashes; those below level 8 are hashed from at most 256 leaf
-- hashes, those above are read here. One row per 128 entries.
CREATE TABLE audit_subtrees (
    level INTEGER NOT NULL,
    start INTEGER NOT NULL,
    hash  BLOB    NOT NULL,
    PRIMARY KEY (level, start)
) WITHOUT ROWID;

-- The compact range of the tree (roots of the perfect subtrees covering [0, size)), updated in
-- the same transaction as the entries, so a restart resumes without reading every leaf.
CREATE TABLE audit_tree (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    size  INTEGER NOT NULL,
    peaks BLOB    NOT NULL            -- concatenated hashes, leftmost first
);
INSERT INTO audit_tree VALUES (1, 0, x'');

-- Signed checkpoints (C2SP signed notes), at most one per tree size.
CREATE TABLE audit_checkpoints (
    size    INTEGER PRIMARY KEY,
    time_us INTEGER NOT NULL,
    note    TEXT    NOT NULL
);
