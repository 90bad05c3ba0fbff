-- Hutong hub schema on Citus (PostgreSQL with the citus extension): which table goes where.
--
-- NOT TESTED HERE: no Citus (nor CockroachDB or YugabyteDB) can be installed from this
-- project's package registries, so this file is checked only for covering every table of
-- migrations/postgresql (tests/unit/store/test_citus_plan.py). Try it on a staging cluster
-- first; deploy/citus/README.md says what to expect.
--
-- Run on the coordinator, once, after `hutong hub migrate` has created the schema and before
-- the first sync:
--
--   psql "$HUTONG_DB" -v ON_ERROR_STOP=1 -f deploy/citus/distribute.sql
--
-- Three kinds of table:
--   distributed by province  the large per-province tables; a province's rows live on one shard
--                            group (co-located), so a batch's writes and its idempotency check
--                            touch one worker;
--   distributed by key       large tables looked up by another key (person keys, finding ids);
--   coordinator-local        the exchange log and the linkage ledger: one sequence, appended in
--                            order under the writers' advisory lock, which only the coordinator
--                            can give; they stay on the coordinator (citus.use_citus_managed_tables).

BEGIN;

-- Distributed by province, co-located with records.
SELECT create_distributed_table('records', 'province', colocate_with => 'none', shard_count => 64);
SELECT create_distributed_table('households', 'province', colocate_with => 'records');
SELECT create_distributed_table('batches', 'province', colocate_with => 'records');
SELECT create_distributed_table('requests', 'province', colocate_with => 'records');
SELECT create_distributed_table('node_state', 'province', colocate_with => 'records');
SELECT create_distributed_table('event_cursors', 'province', colocate_with => 'records');
SELECT create_distributed_table('monitoring_hits', 'province', colocate_with => 'records');
SELECT create_distributed_table('linkage_unverified', 'province', colocate_with => 'records');

-- Small and read everywhere: a copy on every node.
SELECT create_reference_table('province_state');
SELECT create_reference_table('monitoring_rules');
SELECT create_reference_table('linkage_models');
SELECT create_reference_table('linkage_state');

-- Distributed by their own key.
SELECT create_distributed_table('findings', 'finding_id', colocate_with => 'none');
SELECT create_distributed_table('signals', 'source', colocate_with => 'none');

-- Coordinator-local: the sequenced ledgers (gapless order through one writer lock).
SELECT citus_add_local_table_to_metadata('audit_entries');
SELECT citus_add_local_table_to_metadata('audit_persons');
SELECT citus_add_local_table_to_metadata('audit_persons_recent');
SELECT citus_add_local_table_to_metadata('audit_subtrees');
SELECT citus_add_local_table_to_metadata('audit_tree');
SELECT citus_add_local_table_to_metadata('audit_checkpoints');
SELECT citus_add_local_table_to_metadata('events');
SELECT citus_add_local_table_to_metadata('linkage_links');
SELECT citus_add_local_table_to_metadata('linkage_reviews');
SELECT citus_add_local_table_to_metadata('linkage_events');
SELECT citus_add_local_table_to_metadata('linkage_event_records');
-- Household verifications: few, and completed in one transaction with their event (local above).
SELECT citus_add_local_table_to_metadata('verifications');
-- Tiers: decided and pushed (events, local) in one transaction; inputs and state are tiny.
SELECT citus_add_local_table_to_metadata('tiers');
SELECT citus_add_local_table_to_metadata('tier_dirty');
SELECT citus_add_local_table_to_metadata('tier_inputs');
SELECT citus_add_local_table_to_metadata('tier_state');

COMMIT;
