-- pgaudit_tool schema revision 0008: history survives a move (issue 15).
--
-- Audited tables are identified by OID (audit.tracked_table.relid and every relid after it).
-- pg_dump and pg_restore into another database give every table a new OID, and an old OID may
-- then belong to another table; pg_upgrade keeps them. audit.home records where the audit
-- schema lives (the cluster's system identifier, the database's OID and name) so that doctor
-- can tell a moved schema from a renamed table; audit.reattach() (functions/10_move.sql) finds
-- the tables again by name, rewrites their OIDs everywhere in one transaction, and records each
-- rewrite in audit.relocation, which the journal and so the hash chain cover: the chain hashes
-- a change row's relid as it was captured (docs/chain.md).
--
-- The same revision re-applies functions/ with two more changes of issue 15:
--   * audit.revert and audit.revert_script take p_fire_triggers: a revert switches the
--     application triggers of the tables it writes off (audit.revert_triggers) unless told to
--     fire them, so rows come back exactly as recorded;
--   * capture keeps json values that jsonb cannot hold as their JSON text instead of failing
--     the write (audit._jsonb_kept): every capture function is regenerated.

CREATE TABLE audit.home (
    singleton         boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    system_identifier bigint,
    database_oid      oid         NOT NULL,
    database_name     text        NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    recorded_by       text        NOT NULL DEFAULT session_user
);

COMMENT ON TABLE audit.home IS
    'Where the audit schema was installed or last reattached: one row. When the database now differs (pg_restore into another database or cluster, pg_upgrade), doctor reports it and audit.reattach() re-attaches the registry by name.';
COMMENT ON COLUMN audit.home.singleton IS 'Always true: the table has one row at most.';
COMMENT ON COLUMN audit.home.system_identifier IS 'pg_control_system().system_identifier of the cluster (null when it could not be read).';
COMMENT ON COLUMN audit.home.database_oid IS 'OID of the database.';
COMMENT ON COLUMN audit.home.database_name IS 'Name of the database.';
COMMENT ON COLUMN audit.home.recorded_at IS 'When it was recorded (install, upgrade to 0008 or reattach).';
COMMENT ON COLUMN audit.home.recorded_by IS 'Login role that recorded it.';

REVOKE ALL ON audit.home FROM PUBLIC;


CREATE TABLE audit.relocation (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid         xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    old_relid    oid         NOT NULL,
    new_relid    oid         NOT NULL,
    schema_name  text        NOT NULL,
    table_name   text        NOT NULL,
    last_change  bigint      NOT NULL,
    moved_from   jsonb,
    db_user      text        NOT NULL DEFAULT session_user,
    CHECK (old_relid <> new_relid)
);

COMMENT ON TABLE audit.relocation IS
    'OIDs rewritten by audit.reattach() after the database was moved (pg_restore into another database or cluster): one row per table per reattach. Append-only, journaled and sealed: the hash chain hashes each change row''s relid as captured, undoing the relocations that rewrote it (docs/chain.md).';
COMMENT ON COLUMN audit.relocation.id IS 'Relocation id; increases in the order of the reattaches.';
COMMENT ON COLUMN audit.relocation.txid IS 'Transaction of the reattach.';
COMMENT ON COLUMN audit.relocation.at IS 'Start of that transaction.';
COMMENT ON COLUMN audit.relocation.old_relid IS 'OID the table had in the registry and the log before.';
COMMENT ON COLUMN audit.relocation.new_relid IS 'OID it has now (found by name), or, for a table not found by name whose old OID another table has now, the OID of the placeholder audit.relocated_<old OID>.';
COMMENT ON COLUMN audit.relocation.schema_name IS 'Schema of the table in the registry.';
COMMENT ON COLUMN audit.relocation.table_name IS 'Name of the table in the registry.';
COMMENT ON COLUMN audit.relocation.last_change IS 'Highest audit.change id when it was rewritten: change rows up to it were captured under old_relid (or under an older one, see earlier relocations).';
COMMENT ON COLUMN audit.relocation.moved_from IS 'The audit.home row before the reattach (where the schema was), as JSON.';
COMMENT ON COLUMN audit.relocation.db_user IS 'Login role that ran the reattach.';

REVOKE ALL ON audit.relocation FROM PUBLIC;


-- The home of an existing installation is this database, unless its registry already looks
-- moved (restored with an older version): then no row, and doctor judges by the names alone.
DO $$
DECLARE
    v_sysid bigint;
BEGIN
    IF EXISTS (SELECT FROM audit.tracked_table AS x
                WHERE pg_catalog.to_regclass(pg_catalog.format('%I.%I', x.schema_name, x.table_name)) IS NOT NULL
                  AND pg_catalog.to_regclass(pg_catalog.format('%I.%I', x.schema_name, x.table_name))::oid <> x.relid) THEN
        RETURN;
    END IF;
    BEGIN
        SELECT s.system_identifier INTO v_sysid FROM pg_catalog.pg_control_system() AS s;
    EXCEPTION WHEN insufficient_privilege THEN
        v_sysid := NULL;
    END;
    INSERT INTO audit.home (system_identifier, database_oid, database_name)
    SELECT v_sysid, d.oid, d.datname FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database();
END
$$;
