-- pgaudit_tool schema revision 0009: a partitioned log (issue 16).
--
-- audit.change and audit.transaction become range-partitioned by the start of the writing
-- transaction (started_at; audit.change gains the column, filled by its default now()), so
-- that a transaction's record and its change rows always lie in partitions of the same range,
-- old history leaves by dropping whole partitions (archive, retention) instead of a DELETE,
-- and a query with a time bound reads only the partitions it needs. Joins between the two
-- tables use the key (txid, started_at): each lookup reads one partition.
--
-- This revision renames the unpartitioned tables to audit.change_0008 and
-- audit.transaction_0008 and creates the partitioned ones with their default partitions
-- (a write never fails for want of a partition). The rows move afterwards, in the same
-- transaction, when sql/functions/99_finish.sql calls audit._partition_legacy() (it needs
-- functions/12_partition.sql to create the partitions that hold them): the whole upgrade
-- holds an ACCESS EXCLUSIVE lock on the log, so audited writes wait for it (README, "Upgrading
-- to the partitioned log", gives the time per million rows).
--
-- audit.partitioning holds the settings: the interval of new partitions (install
-- --partition-interval, or the setting pgaudit.partition_interval while this revision runs;
-- 1 week by default) and how many intervals ahead maintain keeps partitions (install
-- --partitions-ahead, pgaudit.partitions_ahead; 3 by default).

-- Audited writes stop first, in the order they take their locks (the audited table, then
-- audit.change, then audit.transaction): a write in progress finishes, later ones wait at their
-- table (reads go on) and run after the upgrade with the new capture code; a write that had
-- already entered the old capture code would fail against the new tables.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT x.relid::regclass AS tab FROM audit.tracked_table AS x
              WHERE x.enabled AND EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = x.relid)
              ORDER BY x.relid LOOP
        EXECUTE pg_catalog.format('LOCK TABLE %s IN EXCLUSIVE MODE', r.tab);
    END LOOP;
END
$$;
LOCK TABLE audit.change, audit.transaction IN ACCESS EXCLUSIVE MODE;

CREATE TABLE audit.partitioning (
    singleton          boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    partition_interval interval    NOT NULL CONSTRAINT partition_interval_check
        CHECK (partition_interval >= interval '1 minute'
               AND (pg_catalog.date_trunc('month', partition_interval) = interval '0'
                    OR pg_catalog.date_trunc('month', partition_interval) = partition_interval)),
    ahead              integer     NOT NULL DEFAULT 3 CHECK (ahead BETWEEN 1 AND 1000),
    changed_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    changed_by         text        NOT NULL DEFAULT session_user
);

COMMENT ON TABLE audit.partitioning IS
    'Settings of the partitioned log (one row): the interval of the partitions maintain creates from now on, and how many intervals ahead of now it keeps them. Change them with audit.set_partitioning().';
COMMENT ON COLUMN audit.partitioning.singleton IS 'Always true: the table has one row.';
COMMENT ON COLUMN audit.partitioning.partition_interval IS 'Time range of each new partition of audit.change and audit.transaction: at least 1 minute; either whole months (1 month, 1 year) or no months (1 day, 1 week, 6 hours).';
COMMENT ON COLUMN audit.partitioning.ahead IS 'Partitions are created until this many intervals after now (audit.maintain()).';
COMMENT ON COLUMN audit.partitioning.changed_at IS 'When the settings were last changed.';
COMMENT ON COLUMN audit.partitioning.changed_by IS 'Login role that last changed them.';

INSERT INTO audit.partitioning (partition_interval, ahead)
VALUES (coalesce(nullif(pg_catalog.current_setting('pgaudit.partition_interval', true), '')::interval,
                 '1 week'),
        coalesce(nullif(pg_catalog.current_setting('pgaudit.partitions_ahead', true), '')::integer, 3));

REVOKE ALL ON audit.partitioning FROM PUBLIC;


-- The old tables keep their data until audit._partition_legacy() moves it; their dependent
-- objects go (functions/ re-creates them on the new tables) and their names are freed.
DROP VIEW IF EXISTS audit.history_columns;
DROP VIEW IF EXISTS audit.history;
DROP FUNCTION IF EXISTS audit.watch_pending(pg_snapshot);
DROP TRIGGER IF EXISTS mark_commit ON audit.transaction;
-- The commit marker becomes one function per partition (functions/12_partition.sql).
DROP FUNCTION IF EXISTS audit._mark_commit();

ALTER TABLE audit.change RENAME TO change_0008;
ALTER INDEX audit.change_pkey RENAME TO change_0008_pkey;
ALTER INDEX audit.change_row_idx RENAME TO change_0008_row_idx;
ALTER INDEX audit.change_txid_idx RENAME TO change_0008_txid_idx;
ALTER INDEX audit.change_clock_brin RENAME TO change_0008_clock_brin;
ALTER SEQUENCE audit.change_id_seq RENAME TO change_0008_id_seq;
ALTER TABLE audit.transaction RENAME TO transaction_0008;
ALTER INDEX audit.transaction_pkey RENAME TO transaction_0008_pkey;


CREATE TABLE audit.transaction (
    txid             xid8        NOT NULL,
    started_at       timestamptz NOT NULL,
    db_user          text        NOT NULL,
    application_name text,
    client_addr      inet,
    client_port      integer,
    backend_pid      integer     NOT NULL,
    actor            text,
    context          jsonb,
    committed_at     timestamptz,
    PRIMARY KEY (txid, started_at)
) PARTITION BY RANGE (started_at);

CREATE TABLE audit.change (
    id           bigint      GENERATED ALWAYS AS IDENTITY,
    txid         xid8        NOT NULL,
    relid        oid         NOT NULL,
    schema_name  text        NOT NULL,
    table_name   text        NOT NULL,
    op           "char"      NOT NULL,
    role         text        NOT NULL,
    statement_at timestamptz NOT NULL,
    clock_at     timestamptz NOT NULL,
    pk           jsonb,
    old          jsonb,
    new          jsonb,
    started_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (id, started_at)
) PARTITION BY RANGE (started_at);

-- The comments of the columns they had are theirs still; the tables' own are below.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT o.relname AS old_name, n.relname AS new_name, a.attname, d.description
               FROM (VALUES ('change_0008', 'change'), ('transaction_0008', 'transaction')) AS m(o, n)
               JOIN pg_catalog.pg_class AS o ON o.relname = m.o AND o.relnamespace = 'audit'::regnamespace
               JOIN pg_catalog.pg_class AS n ON n.relname = m.n AND n.relnamespace = 'audit'::regnamespace
               JOIN pg_catalog.pg_attribute AS a ON a.attrelid = o.oid AND a.attnum > 0 AND NOT a.attisdropped
               JOIN pg_catalog.pg_description AS d
                 ON d.objoid = o.oid AND d.classoid = 'pg_catalog.pg_class'::regclass AND d.objsubid = a.attnum LOOP
        EXECUTE pg_catalog.format('COMMENT ON COLUMN audit.%I.%I IS %L', r.new_name, r.attname, r.description);
    END LOOP;
END
$$;

COMMENT ON TABLE audit.transaction IS
    'One row per transaction that changed an audited table: the session context, recorded at the transaction''s first audited statement. Rolled-back transactions leave no row. Partitioned by started_at (audit.partitions()); the key is (txid, started_at).';
COMMENT ON TABLE audit.change IS
    'One row per changed row of an audited table, written in the same transaction as the change. The state of the row after the change is "new" (null: the row no longer exists under this key); before it, "old" (null: it did not exist). Partitioned by started_at, the start of its transaction (audit.partitions()); join audit.transaction on (txid, started_at).';
COMMENT ON COLUMN audit.change.started_at IS 'Start of the change''s transaction (now(), equal to audit.transaction.started_at): the partition key. Not part of the hash chain (it repeats the transaction record''s).';

CREATE TABLE audit.transaction_default PARTITION OF audit.transaction DEFAULT;
CREATE TABLE audit.change_default PARTITION OF audit.change DEFAULT;

COMMENT ON TABLE audit.transaction_default IS
    'Default partition of audit.transaction: rows of transactions whose start no range partition covers (partitions ran out). audit.maintain() moves them into the partitions it creates.';
COMMENT ON TABLE audit.change_default IS
    'Default partition of audit.change: rows of transactions whose start no range partition covers (partitions ran out). audit.maintain() moves them into the partitions it creates.';

-- Row history (row-at, blame, revert) looks rows up by table and key, in change order.
CREATE INDEX change_row_idx ON audit.change (relid, pk, id);
-- Everything one transaction did (transaction view, revert by txid).
CREATE INDEX change_txid_idx ON audit.change (txid);
-- Time windows: change rows arrive in (nearly) time order; a BRIN index is tiny and nearly free.
CREATE INDEX change_clock_brin ON audit.change USING brin (clock_at);

REVOKE ALL ON audit.transaction, audit.change, audit.transaction_default, audit.change_default FROM PUBLIC;


-- ----------------------------------------------------------------- retired history
--
-- Old partitions leave the log whole (archive --drop, retention): audit.retired_partition
-- records each one dropped, with its row counts, transaction id range and archive files. The
-- hash chain's blocks stay in audit.seal; verify can no longer recompute a block whose rows
-- all left (audit.retired_block lists them: their links are still checked, and verify
-- --archive recomputes them from the files), and a block with rows both dropped and left in
-- the log keeps the digests of its dropped rows in audit.retired_row, so that plain verify
-- still proves the rows left. Both record tables are journaled (sealed with the next block);
-- the digests need not be: a digest that is not the dropped row's makes its block fail.

CREATE TABLE audit.retired_partition (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    suffix       text        NOT NULL,
    lower        timestamptz NOT NULL,
    upper        timestamptz NOT NULL,
    transactions bigint      NOT NULL,
    changes      bigint      NOT NULL,
    txid_min     xid8,
    txid_max     xid8,
    committed_max timestamptz,
    tables       oid[]       NOT NULL DEFAULT '{}',
    files        jsonb,
    reason       text        NOT NULL CHECK (reason IN ('archive', 'retention')),
    retired_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    retired_by   text        NOT NULL DEFAULT session_user,
    txid         xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id()
);

COMMENT ON TABLE audit.retired_partition IS
    'Partitions of the log dropped by archive --drop or retention: what left, when, by whom, and where it went (files: the archive''s Parquet files and their sha256; null when retention dropped it without an archive). Journaled: sealed with the next block.';
COMMENT ON COLUMN audit.retired_partition.id IS 'Retirement id, in the order of the drops.';
COMMENT ON COLUMN audit.retired_partition.suffix IS 'Name suffix of the partitions audit.change_p<suffix> and audit.transaction_p<suffix> (a range dropped once may get a partition again, for rows of a transaction that started in it and wrote later).';
COMMENT ON COLUMN audit.retired_partition.lower IS 'Start of the partitions'' range of transaction start times (inclusive).';
COMMENT ON COLUMN audit.retired_partition.upper IS 'End of that range (exclusive).';
COMMENT ON COLUMN audit.retired_partition.transactions IS 'Rows of audit.transaction dropped.';
COMMENT ON COLUMN audit.retired_partition.changes IS 'Rows of audit.change dropped.';
COMMENT ON COLUMN audit.retired_partition.txid_min IS 'Lowest transaction id among them (null: none).';
COMMENT ON COLUMN audit.retired_partition.txid_max IS 'Highest transaction id among them (null: none).';
COMMENT ON COLUMN audit.retired_partition.committed_max IS 'Latest commit time of the transactions dropped: states of the log''s tables at earlier instants cannot be rebuilt from the log alone any more (they need the archive).';
COMMENT ON COLUMN audit.retired_partition.tables IS 'OIDs of the tables whose changes were dropped.';
COMMENT ON COLUMN audit.retired_partition.files IS 'The archive files holding the rows: {"change": {"file", "sha256", "bytes", "rows"}, "transaction": {...}, "archive": directory as given}; null: dropped without archive (retention --no-archive).';
COMMENT ON COLUMN audit.retired_partition.reason IS 'archive (archive --drop, or retention with an archive directory) or retention (retention --no-archive).';
COMMENT ON COLUMN audit.retired_partition.retired_at IS 'Start of the dropping transaction.';
COMMENT ON COLUMN audit.retired_partition.retired_by IS 'Login role that dropped them.';
COMMENT ON COLUMN audit.retired_partition.txid IS 'Transaction that dropped them.';

CREATE TABLE audit.retired_block (
    seq          bigint      PRIMARY KEY,
    retirement   bigint      NOT NULL,
    retired_at   timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE audit.retired_block IS
    'Blocks of the hash chain none of whose rows is left in the log (their partitions were dropped): verify checks their links only, verify --archive recomputes them from the archive. Journaled.';
COMMENT ON COLUMN audit.retired_block.seq IS 'The block (audit.seal.seq).';
COMMENT ON COLUMN audit.retired_block.retirement IS 'The drop that took its last rows (audit.retired_partition.id).';
COMMENT ON COLUMN audit.retired_block.retired_at IS 'When.';

CREATE TABLE audit.retired_row (
    kind       "char"  NOT NULL CHECK (kind IN ('T', 'C')),
    txid       xid8    NOT NULL,
    id         bigint  NOT NULL,
    digest     bytea   NOT NULL,
    retirement bigint  NOT NULL,
    PRIMARY KEY (kind, txid, id)
);

COMMENT ON TABLE audit.retired_row IS
    'Row digests (docs/chain.md) of dropped rows whose block still has rows in the log: verify merges them with the rows left, so plain verify still proves those. Not journaled: a digest other than the dropped row''s makes its block''s hash fail.';
COMMENT ON COLUMN audit.retired_row.kind IS 'T: a transaction record, C: a change.';
COMMENT ON COLUMN audit.retired_row.txid IS 'Its transaction id.';
COMMENT ON COLUMN audit.retired_row.id IS 'Its change id (0 for a transaction record).';
COMMENT ON COLUMN audit.retired_row.digest IS 'D(row) as the chain defines it.';
COMMENT ON COLUMN audit.retired_row.retirement IS 'The drop that took the row (audit.retired_partition.id).';


-- ----------------------------------------------------------------- legal holds
--
-- A hold keeps history in the log: archive --drop and retention refuse to drop a partition
-- holding changes of a held table (or any partition, under a hold of everything) until the
-- hold is released or expires. Journaled: placing and releasing holds is itself history.

CREATE TABLE audit.hold (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid       oid,
    table_name  text,
    until       timestamptz,
    reason      text,
    placed_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    placed_by   text        NOT NULL DEFAULT session_user,
    released_at timestamptz,
    released_by text,
    CHECK ((relid IS NULL) = (table_name IS NULL))
);

COMMENT ON TABLE audit.hold IS
    'Legal holds: while one is active (not released, until null or in the future), archive --drop and retention refuse to drop partitions holding changes of its table (relid null: of any table). Journaled.';
COMMENT ON COLUMN audit.hold.id IS 'Hold id.';
COMMENT ON COLUMN audit.hold.relid IS 'OID of the held table; null: the whole log is held.';
COMMENT ON COLUMN audit.hold.table_name IS 'Schema-qualified name of the table when the hold was placed (null: everything).';
COMMENT ON COLUMN audit.hold.until IS 'The hold ends by itself at this instant (null: until released).';
COMMENT ON COLUMN audit.hold.reason IS 'Why (free text: case number, request).';
COMMENT ON COLUMN audit.hold.placed_at IS 'When the hold was placed.';
COMMENT ON COLUMN audit.hold.placed_by IS 'Login role that placed it.';
COMMENT ON COLUMN audit.hold.released_at IS 'When it was released (null: not released).';
COMMENT ON COLUMN audit.hold.released_by IS 'Login role that released it.';

REVOKE ALL ON audit.retired_partition, audit.retired_block, audit.retired_row, audit.hold FROM PUBLIC;
