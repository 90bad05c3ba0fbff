-- Hutong hub schema, version 4 (SQLite): identity linkage.
-- Records whose province could not give a valid ID number are linked to persons probabilistically
-- as they arrive (gateway.store.sqlite_linkage). Links, review items and lineage events are written
-- in the transaction of the batch or the decision that made them; names and ID numbers never
-- appear here (records are named 'province/record_id', persons by their keyed person keys).

-- The linkage models the hub has linked with, newest last; links and review items name their version.
CREATE TABLE linkage_models (
    version       INTEGER PRIMARY KEY,
    created_at_us INTEGER NOT NULL,
    source        TEXT    NOT NULL,  -- 'bootstrap' (shipped with Hutong) or 'trained' (on this hub's records)
    records       INTEGER NOT NULL,  -- records it was trained on; 0 for the bootstrap model
    digest        BLOB    NOT NULL,  -- SHA-256 of the model's JSON
    model         TEXT    NOT NULL,  -- gateway.domain.linkage.LinkageModel JSON (weights only, no records)
    first_used_at_us INTEGER NOT NULL DEFAULT 0  -- when a hub first linked with it (an exchange-log entry)
);

-- Records held under a provisional person key (HMAC of province and record id) because their
-- province flagged the ID number unverified; records.person_key is that key until a link re-keys them.
CREATE TABLE linkage_unverified (
    province        TEXT NOT NULL,
    record_id       TEXT NOT NULL,
    provisional_key BLOB NOT NULL,
    PRIMARY KEY (province, record_id)
) WITHOUT ROWID;

-- Every link ever made, with its evidence; ended_seq <> 0 once a split or a detach undid it.
CREATE TABLE linkage_links (
    link_id       INTEGER PRIMARY KEY,
    record_a      TEXT    NOT NULL,  -- the record whose arrival (or review) made the link
    record_b      TEXT    NOT NULL,
    decision      TEXT    NOT NULL,  -- the scored pair and every comparison's level and weight (JSON)
    model_version INTEGER NOT NULL,
    made_by       TEXT    NOT NULL,  -- 'linker', or the reviewer's node URI
    made_seq      INTEGER NOT NULL,  -- the lineage event that made it
    created_at_us INTEGER NOT NULL,
    ended_seq     INTEGER NOT NULL DEFAULT 0,
    ended_kind    INTEGER NOT NULL DEFAULT 0,  -- hutong.v1.LineageEventKind of the event that undid it
    ended_at_us   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX linkage_links_by_a ON linkage_links (record_a);
CREATE INDEX linkage_links_by_b ON linkage_links (record_b);

-- Grey-band pairs for a person to decide.
CREATE TABLE linkage_reviews (
    review_id     INTEGER PRIMARY KEY,
    record_a      TEXT    NOT NULL,
    record_b      TEXT    NOT NULL,
    province_a    TEXT    NOT NULL,
    province_b    TEXT    NOT NULL,
    decision      TEXT    NOT NULL,
    model_version INTEGER NOT NULL,
    state         INTEGER NOT NULL DEFAULT 1,  -- hutong.v1.ReviewState: 1 open, 2 accepted, 3 rejected
    created_at_us INTEGER NOT NULL,
    decided_at_us INTEGER NOT NULL DEFAULT 0,
    decided_by    TEXT    NOT NULL DEFAULT '',
    reason        TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX linkage_reviews_by_state ON linkage_reviews (state, review_id);
CREATE INDEX linkage_reviews_by_province_a ON linkage_reviews (province_a, review_id);
CREATE INDEX linkage_reviews_by_province_b ON linkage_reviews (province_b, review_id);

-- Lineage: every change to the clusters of linked records (or a decision not to change them).
CREATE TABLE linkage_events (
    seq           INTEGER PRIMARY KEY,
    kind          INTEGER NOT NULL,  -- hutong.v1.LineageEventKind
    records       TEXT    NOT NULL,  -- JSON list of the pair (or the one record detached)
    decision      TEXT    NOT NULL,  -- the scored pair behind it (JSON), '' for a detach
    model_version INTEGER NOT NULL,
    actor         TEXT    NOT NULL,  -- 'linker', or the reviewer's node URI
    reason        TEXT    NOT NULL,
    rekeyed       TEXT    NOT NULL,  -- JSON [[record, person key before (hex), after (hex)], ...]
    at_us         INTEGER NOT NULL
);

-- The records each event touched (their clusters before and after), for one record's lineage.
CREATE TABLE linkage_event_records (
    record TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (record, seq)
) WITHOUT ROWID;

-- Bumped by every transaction that changes the linker's state: the hub's in-memory index checks
-- it before each use, and is rebuilt from these tables if a transaction it took part in rolled back.
CREATE TABLE linkage_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT INTO linkage_state VALUES (1, 0);
