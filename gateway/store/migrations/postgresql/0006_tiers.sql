-- Hutong hub schema, version 6 (PostgreSQL): tiered identification (分层分类). Equivalent to
-- migrations/sqlite/0006_tiers.sql (same columns in the same order, same index names). Not
-- partitioned: one row per person, found by person key; counts read the (province, tier) index.

CREATE TABLE tier_inputs (
    digest       bytea PRIMARY KEY,
    kind         text COLLATE "C" NOT NULL,
    version      text COLLATE "C" NOT NULL,
    text         text NOT NULL,
    loaded_at_us bigint NOT NULL
);

CREATE TABLE tier_state (
    id               bigint PRIMARY KEY CHECK (id = 1),
    rules_digest     bytea NOT NULL,
    standards_digest bytea NOT NULL,
    day              text COLLATE "C" NOT NULL
);

CREATE TABLE tiers (
    person_key         bytea PRIMARY KEY,
    province           text COLLATE "C" NOT NULL,
    residence_division text COLLATE "C" NOT NULL,
    tier               text COLLATE "C" NOT NULL,
    rules_digest       bytea NOT NULL,
    standards_digest   bytea NOT NULL,
    day                text COLLATE "C" NOT NULL,
    evidence           text NOT NULL,
    decided_at_us      bigint NOT NULL,
    changed_at_us      bigint NOT NULL
);
CREATE INDEX tiers_by_province ON tiers (province, tier);
CREATE INDEX tiers_by_residence ON tiers (residence_division);

CREATE TABLE tier_dirty (
    person_key bytea PRIMARY KEY,
    marked_us  bigint NOT NULL
);
