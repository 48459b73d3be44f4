-- pgaudit_tool schema revision 0001: storage. Runs once, when the schema is installed.
--
-- sql/schema/ holds what must run exactly once, in revision order: tables, indexes and data
-- changes. Functions, views and triggers live in sql/functions/, which every install or upgrade
-- re-applies as a whole after the pending revisions (CREATE OR REPLACE), so each function has one
-- source text whatever revision a database comes from.
--
-- Tables:
--   audit.tracked_table   registry of audited tables and their capture settings
--   audit.tracked_schema  schemas enabled as a whole
--   audit.transaction     one row per audited transaction: who, from where, with what context
--   audit.table_layout    column layouts of audited tables over time
--   audit.change          one row per changed row: JSONB before/after images
--   audit.seal            hash chain over the log (tamper evidence, see functions/06_integrity.sql)
--
-- The tables are written only by the capture trigger functions, which run as the owner of the
-- audit schema (SECURITY DEFINER). Nobody else gets any privilege on them here; read access is
-- granted explicitly (see the README, "Access").

CREATE TABLE audit.tracked_table (
    relid            oid         PRIMARY KEY,
    schema_name      text        NOT NULL,
    table_name       text        NOT NULL,
    key_source       text        NOT NULL CHECK (key_source IN ('primary key', 'replica identity')),
    key_attnums      int2[]      NOT NULL,
    key_columns      text[]      NOT NULL,
    excluded_attnums int2[]      NOT NULL DEFAULT '{}',
    excluded_columns text[]      NOT NULL DEFAULT '{}',
    capture_truncate boolean     NOT NULL DEFAULT true,
    enabled          boolean     NOT NULL DEFAULT true,
    history_since    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    enabled_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    enabled_by       text        NOT NULL DEFAULT session_user,
    disabled_at      timestamptz,
    generated_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    generated_layout text[],
    capture_function text        NOT NULL
);

COMMENT ON TABLE audit.tracked_table IS
    'Registry of the tables pgaudit_tool audits (or audited), with their capture settings. One row per table, kept after disable so its history stays interpretable.';
COMMENT ON COLUMN audit.tracked_table.relid IS 'OID of the audited table.';
COMMENT ON COLUMN audit.tracked_table.schema_name IS 'Schema of the table when capture was last (re)generated.';
COMMENT ON COLUMN audit.tracked_table.table_name IS 'Name of the table when capture was last (re)generated.';
COMMENT ON COLUMN audit.tracked_table.key_source IS 'Where the row key comes from: the primary key, or the replica identity index when there is no primary key.';
COMMENT ON COLUMN audit.tracked_table.key_attnums IS 'Attribute numbers of the key columns (stable across RENAME COLUMN).';
COMMENT ON COLUMN audit.tracked_table.key_columns IS 'Names of the key columns when capture was last (re)generated.';
COMMENT ON COLUMN audit.tracked_table.excluded_attnums IS 'Attribute numbers of the columns never stored in the log (stable across RENAME COLUMN).';
COMMENT ON COLUMN audit.tracked_table.excluded_columns IS 'Names of the excluded columns when capture was last (re)generated.';
COMMENT ON COLUMN audit.tracked_table.capture_truncate IS 'Whether TRUNCATE stores the content of the removed rows (true) or only a marker (false).';
COMMENT ON COLUMN audit.tracked_table.enabled IS 'Whether capture is currently on. Disabled tables keep their history.';
COMMENT ON COLUMN audit.tracked_table.history_since IS 'When auditing of this table first started: history before this instant does not exist.';
COMMENT ON COLUMN audit.tracked_table.enabled_at IS 'When capture was last enabled.';
COMMENT ON COLUMN audit.tracked_table.enabled_by IS 'session_user that last enabled capture.';
COMMENT ON COLUMN audit.tracked_table.disabled_at IS 'When capture was last disabled (null while enabled).';
COMMENT ON COLUMN audit.tracked_table.generated_at IS 'When the capture trigger function was last generated.';
COMMENT ON COLUMN audit.tracked_table.generated_layout IS 'The table''s columns (attnum:name, in order) when the capture function was generated; doctor compares it with the table now.';


CREATE TABLE audit.tracked_schema (
    schema_name text        PRIMARY KEY,
    enabled_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    enabled_by  text        NOT NULL DEFAULT session_user
);

COMMENT ON TABLE audit.tracked_schema IS
    'Schemas enabled as a whole (enable --schema): doctor reports their tables that are not audited.';
COMMENT ON COLUMN audit.tracked_schema.schema_name IS 'Name of the schema.';
COMMENT ON COLUMN audit.tracked_schema.enabled_at IS 'When the schema was enabled.';
COMMENT ON COLUMN audit.tracked_schema.enabled_by IS 'session_user that enabled it.';
COMMENT ON COLUMN audit.tracked_table.capture_function IS 'Name of the generated capture trigger function in the audit schema.';


CREATE TABLE audit.transaction (
    txid             xid8        PRIMARY KEY,
    started_at       timestamptz NOT NULL,
    db_user          text        NOT NULL,
    application_name text,
    client_addr      inet,
    client_port      integer,
    backend_pid      integer     NOT NULL,
    actor            text,
    context          jsonb,
    committed_at     timestamptz
);

COMMENT ON TABLE audit.transaction IS
    'One row per transaction that changed an audited table: the session context, recorded at the transaction''s first audited statement. Rolled-back transactions leave no row.';
COMMENT ON COLUMN audit.transaction.txid IS 'Transaction id (pg_current_xact_id(), xid8: unique, never wraps).';
COMMENT ON COLUMN audit.transaction.started_at IS 'Start of the transaction (now()).';
COMMENT ON COLUMN audit.transaction.db_user IS 'The login role (session_user).';
COMMENT ON COLUMN audit.transaction.application_name IS 'application_name of the session.';
COMMENT ON COLUMN audit.transaction.client_addr IS 'Client IP address (null over a Unix socket).';
COMMENT ON COLUMN audit.transaction.client_port IS 'Client TCP port (null over a Unix socket).';
COMMENT ON COLUMN audit.transaction.backend_pid IS 'PID of the server process.';
COMMENT ON COLUMN audit.transaction.actor IS 'Application user, from set_config(''pgaudit.actor'', ..., true) (null when unset).';
COMMENT ON COLUMN audit.transaction.context IS 'Application context, a JSON object from set_config(''pgaudit.context'', ..., true) (null when unset).';
COMMENT ON COLUMN audit.transaction.committed_at IS 'Clock time at COMMIT (written by a deferred trigger just before the commit record; null while the transaction is in progress). "The state at T" means: every transaction with committed_at <= T applied.';


CREATE TABLE audit.table_layout (
    relid      oid         NOT NULL,
    valid_from timestamptz NOT NULL,
    attnums    int2[]      NOT NULL,
    columns    text[]      NOT NULL,
    PRIMARY KEY (relid, valid_from)
);

COMMENT ON TABLE audit.table_layout IS
    'Column layouts of audited tables over time: recorded at enable/refresh and by capture at the first change after ALTER TABLE added, dropped or renamed a column. Reconstruction uses it to read old images under today''s column names.';
COMMENT ON COLUMN audit.table_layout.relid IS 'OID of the audited table.';
COMMENT ON COLUMN audit.table_layout.valid_from IS 'Images captured at or after this instant (audit.change.clock_at) use this layout.';
COMMENT ON COLUMN audit.table_layout.attnums IS 'Attribute numbers of the columns, in order.';
COMMENT ON COLUMN audit.table_layout.columns IS 'Names of the columns, in the same order.';


CREATE TABLE audit.change (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid         xid8        NOT NULL,
    relid        oid         NOT NULL,
    schema_name  text        NOT NULL,
    table_name   text        NOT NULL,
    op           "char"      NOT NULL CHECK (op IN ('I', 'U', 'D', 'T')),
    role         text        NOT NULL,
    statement_at timestamptz NOT NULL,
    clock_at     timestamptz NOT NULL,
    pk           jsonb,
    old          jsonb,
    new          jsonb
);

COMMENT ON TABLE audit.change IS
    'One row per changed row of an audited table, written in the same transaction as the change. The state of the row after the change is "new" (null: the row no longer exists under this key); before it, "old" (null: it did not exist).';
COMMENT ON COLUMN audit.change.id IS 'Change id; increases in capture order within a transaction.';
COMMENT ON COLUMN audit.change.txid IS 'Transaction of the change (join audit.transaction).';
COMMENT ON COLUMN audit.change.relid IS 'OID of the audited table (for a write made directly on a partition: the audited partitioned table).';
COMMENT ON COLUMN audit.change.schema_name IS 'Schema of the audited table at the time of the change.';
COMMENT ON COLUMN audit.change.table_name IS 'Name of the audited table at the time of the change.';
COMMENT ON COLUMN audit.change.op IS 'I = INSERT, U = UPDATE, D = DELETE, T = TRUNCATE. An UPDATE that changed a key is recorded per key: the old key with new = null, the new key with old = null.';
COMMENT ON COLUMN audit.change.role IS 'The role that executed the statement (current_user at the statement, also inside SECURITY DEFINER code).';
COMMENT ON COLUMN audit.change.statement_at IS 'Start of the client statement (statement_timestamp()).';
COMMENT ON COLUMN audit.change.clock_at IS 'Wall-clock time when the change was captured (end of the statement).';
COMMENT ON COLUMN audit.change.pk IS 'Key of the row as a JSON object {column: value}; null only for a TRUNCATE marker.';
COMMENT ON COLUMN audit.change.old IS 'Row before the change as JSONB, without excluded columns; null for INSERT.';
COMMENT ON COLUMN audit.change.new IS 'Row after the change as JSONB, without excluded columns; null for DELETE and TRUNCATE.';


-- Row history (row-at, blame, revert) looks rows up by table and key, in change order.
CREATE INDEX change_row_idx ON audit.change (relid, pk, id);


-- Everything one transaction did (transaction view, revert by txid).
CREATE INDEX change_txid_idx ON audit.change (txid);


-- Time windows: change rows arrive in (nearly) time order, so a BRIN index is tiny and nearly
-- free to maintain on the write path.
CREATE INDEX change_clock_brin ON audit.change USING brin (clock_at);


REVOKE ALL ON audit.tracked_table, audit.tracked_schema, audit.transaction, audit.table_layout, audit.change FROM PUBLIC;


CREATE TABLE audit.seal (
    seq          bigint      PRIMARY KEY,
    txid_from    xid8        NOT NULL,
    txid_to      xid8        NOT NULL,
    transactions bigint      NOT NULL,
    changes      bigint      NOT NULL,
    prev_hash    bytea       NOT NULL,
    hash         bytea       NOT NULL,
    sealed_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    CHECK (txid_from < txid_to)
);

COMMENT ON TABLE audit.seal IS
    'Hash chain over the audit log, one row per sealed block of transactions [txid_from, txid_to). Written by audit.seal(), checked by audit.verify().';
COMMENT ON COLUMN audit.seal.seq IS 'Position of the block in the chain, from 1.';
COMMENT ON COLUMN audit.seal.txid_from IS 'First transaction id covered (the previous block''s txid_to; 0 for the first block).';
COMMENT ON COLUMN audit.seal.txid_to IS 'Transaction ids below this one are covered (exclusive): the oldest transaction running at sealing.';
COMMENT ON COLUMN audit.seal.transactions IS 'Number of audit.transaction rows in the block.';
COMMENT ON COLUMN audit.seal.changes IS 'Number of audit.change rows in the block.';
COMMENT ON COLUMN audit.seal.prev_hash IS 'Hash of the previous block (32 zero bytes for the first).';
COMMENT ON COLUMN audit.seal.hash IS 'sha256(prev_hash || digests of the block''s rows in order).';
COMMENT ON COLUMN audit.seal.sealed_at IS 'When the block was sealed.';

REVOKE ALL ON audit.seal FROM PUBLIC;
