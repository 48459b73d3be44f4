-- pgaudit_tool schema revision 0004: security and integrity, round 2.
--
-- Sections (one per concern; functions/ holds the code that uses them):
--   history breaks     DDL that changed data without logging it (rewrites, key changes,
--                      partitions attached or detached): reconstruction refuses to cross one
--   exclusions         excluded column names stay excluded whatever migration re-creates them
--   chain              the hash chain also covers the registry and the column layouts

-- ----------------------------------------------------------------- history breaks
--
-- DDL can change what a table holds without an INSERT, UPDATE or DELETE for capture to see: a
-- column rewritten by ALTER COLUMN ... TYPE ... USING, a key replaced, a partition with rows
-- attached or detached. The past cannot be rebuilt from the live table across such a command, so
-- it is recorded as a break: reconstruction and revert refuse to cross it, with a clear error.

CREATE TABLE audit.history_break (
    id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid   oid         NOT NULL,
    at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    txid    xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    reason  text        NOT NULL,
    db_user text        NOT NULL DEFAULT session_user
);

COMMENT ON TABLE audit.history_break IS
    'Breaks in the history of audited tables: DDL that changed their content without logging it (column rewrites, key changes, partitions attached or detached with rows). States before a break cannot be rebuilt from the live table: reconstruction and revert refuse to cross it.';
COMMENT ON COLUMN audit.history_break.id IS 'Break id.';
COMMENT ON COLUMN audit.history_break.relid IS 'OID of the audited table.';
COMMENT ON COLUMN audit.history_break.at IS 'Clock time of the command that broke history (its transaction''s commit time is in audit.transaction).';
COMMENT ON COLUMN audit.history_break.txid IS 'Transaction of the command (join audit.transaction for its commit time and context).';
COMMENT ON COLUMN audit.history_break.reason IS 'What happened, in one sentence.';
COMMENT ON COLUMN audit.history_break.db_user IS 'Login role that ran the command.';

CREATE INDEX history_break_relid_idx ON audit.history_break (relid, at);

REVOKE ALL ON audit.history_break FROM PUBLIC;

-- Column types of each layout: a type change is detected, and judged, at the next write.
ALTER TABLE audit.table_layout ADD COLUMN types oid[];

COMMENT ON COLUMN audit.table_layout.types IS 'Type OIDs of the columns, in the same order (null for layouts recorded before revision 0004).';

-- ----------------------------------------------------------------- exclusions
--
-- Up to 0003 a column stayed excluded while it kept its attribute number, or bore an excluded
-- name when the guard next rewrote capture: DROP COLUMN then ADD COLUMN of the same name as two
-- statements forgot it, and so did copying a secret into a new column before renaming it. Every
-- name an excluded column ever had is now kept, and on a table with exclusions a column added
-- later is excluded too until the exclusions are set again (functions/01_capture.sql,
-- audit._excluded_now).

ALTER TABLE audit.tracked_table ADD COLUMN excluded_names text[] NOT NULL DEFAULT '{}';

COMMENT ON COLUMN audit.tracked_table.excluded_names IS 'Every name an excluded column has had since the exclusions were set: a column bearing one of them is excluded, whatever migration created it.';

ALTER TABLE audit.tracked_table ADD COLUMN held_attnums int2[] NOT NULL DEFAULT '{}';

COMMENT ON COLUMN audit.tracked_table.held_attnums IS 'Columns excluded only because they were added after columns of the table were excluded (doctor lists them; setting the exclusions again releases them).';

UPDATE audit.tracked_table SET excluded_names = excluded_columns;

-- Functions whose signature changed (functions/ re-creates them).
DROP FUNCTION IF EXISTS audit._key_sql(text, text[]);
DROP FUNCTION IF EXISTS audit._image_sql(text, text[]);
DROP FUNCTION IF EXISTS audit._columns_now(oid);

-- ----------------------------------------------------------------- chain
--
-- What history means depends on more than the change and transaction rows: the registry
-- (audit.tracked_table: keys, exclusions, enabled/disabled times, history_since), the column
-- layouts (audit.table_layout) and the history breaks (audit.history_break). Those rows are
-- legitimately updated in place (enable, disable, refresh, the DDL guard, _record_layout's
-- ON CONFLICT), so a sealed block cannot hash them directly. Instead every row version written to
-- them is appended to audit.journal by a trigger (functions/06_integrity.sql), with the writing
-- transaction's id; the blocks hash the journal rows of their transaction range like the other
-- log rows, and verify checks that the registry tables now equal the replay of the journal.
-- Blocks sealed before this revision have no journal row in their range: their hashes stay valid.

CREATE TABLE audit.journal (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid       xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    relation   text        NOT NULL,
    op         "char"      NOT NULL CHECK (op IN ('B', 'I', 'U', 'D')),
    written_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    old        jsonb,
    new        jsonb,
    CHECK ((old IS NULL) = (op IN ('B', 'I')) AND (new IS NULL) = (op = 'D'))
);

COMMENT ON TABLE audit.journal IS
    'Append-only journal of every row version written to the tables that give history its meaning (audit.tracked_table, audit.table_layout, audit.history_break), sealed into the hash chain with the transaction that wrote it. See docs/chain.md.';
COMMENT ON COLUMN audit.journal.id IS 'Journal entry id; increases in write order.';
COMMENT ON COLUMN audit.journal.txid IS 'Transaction that wrote the row version (pg_current_xact_id()).';
COMMENT ON COLUMN audit.journal.relation IS 'Table of the audit schema written to (its name, e.g. tracked_table).';
COMMENT ON COLUMN audit.journal.op IS 'I = INSERT, U = UPDATE, D = DELETE, B = baseline: a row that existed when the journal began (revision 0004).';
COMMENT ON COLUMN audit.journal.written_at IS 'Start of the writing transaction (now()).';
COMMENT ON COLUMN audit.journal.old IS 'The row before (to_jsonb), for U and D.';
COMMENT ON COLUMN audit.journal.new IS 'The row after (to_jsonb), for B, I and U.';

CREATE INDEX journal_txid_idx ON audit.journal (txid, id);

REVOKE ALL ON audit.journal FROM PUBLIC;

-- Rows written before the journal began, as of this upgrade (after the sections above), in
-- the settings of audit._journal() (to_jsonb renders timestamptz in the session's time zone).
DO $$
DECLARE
    v_zone text := pg_catalog.current_setting('timezone');
BEGIN
    PERFORM pg_catalog.set_config('timezone', 'UTC', true);
    INSERT INTO audit.journal (relation, op, new)
    SELECT 'tracked_table', 'B', pg_catalog.to_jsonb(t) FROM audit.tracked_table AS t ORDER BY t.relid;
    INSERT INTO audit.journal (relation, op, new)
    SELECT 'table_layout', 'B', pg_catalog.to_jsonb(l) FROM audit.table_layout AS l ORDER BY l.relid, l.valid_from;
    PERFORM pg_catalog.set_config('timezone', v_zone, true);
END
$$;

-- The digest now also counts the journal rows (a new OUT column): functions/ re-creates it.
DROP FUNCTION IF EXISTS audit._block_digest(xid8, xid8);

-- How many journal rows each block covers (0 for blocks sealed before this revision).
ALTER TABLE audit.seal ADD COLUMN journal bigint NOT NULL DEFAULT 0;

COMMENT ON COLUMN audit.seal.journal IS 'Number of audit.journal rows in the block (0 before revision 0004).';
