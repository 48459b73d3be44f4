-- pgaudit_tool: last step of every install and upgrade, after the functions above.

-- Functions: every role may name the application user of its own transaction
-- (audit.set_actor, which only sets two transaction-local settings), and run the row count
-- check of a revert's statements (audit._revert_count: a table's owner runs it when a revert
-- writes as that owner), and nothing else. USAGE on
-- the schema lets every role reach that function; every other function of the schema is taken
-- from PUBLIC here, after the files above (re)created them, so that a function added by any
-- version is covered. The log's tables and views grant nothing to PUBLIC. Capture functions,
-- generated later by audit.enable(), revoke PUBLIC themselves. (Default privileges cannot do
-- this: per-schema defaults only add to the global ones, and a global default would change the
-- installing role's functions in every schema.)
-- (The reader's grant is taken back and given again below, so that the schema's privileges are
-- listed in the same order whatever revision a database comes from.)
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgaudit_reader') THEN
        REVOKE USAGE ON SCHEMA audit FROM pgaudit_reader;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA audit TO PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA audit FROM PUBLIC;
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc AS p
              WHERE p.pronamespace = 'audit'::regnamespace AND p.proname IN ('set_actor', '_revert_count')
                AND NOT p.prosecdef LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', f);
    END LOOP;
END
$$;

-- search_path and jit: every function of the schema runs with search_path = pg_catalog,
-- pg_temp, so that no function or operator a table owner placed on the caller's search_path (an
-- exact match for the argument types beats pg_catalog's polymorphic unnest, ||, @>, =) is what
-- a function of ours calls, whoever calls it: a reviewer, an administrator, a writer; and with
-- jit off: their queries are small, catalog-bound or planned from estimates of set-returning
-- functions (1000 rows each) that exceed jit_above_cost, and compiling one takes 20 ms where
-- running it takes less than one (on PostgreSQL 15 built with LLVM, enable of a table of 300
-- partitions spent 38 of its 45 s compiling the DDL guard's queries, once per trigger it
-- created; any CREATE or ALTER TABLE in the database paid it). Except those called for every row
-- or transaction of capture, history or reconstruction, whose every call and operator
-- resolves in pg_catalog for their argument types and whose queries are not compiled (a pinned
-- setting costs microseconds per call): audit._context, audit.changed_columns,
-- audit._rename_keys and the commit markers (audit._mark_commit_<partition>, made by
-- audit._partition_marker).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT p.oid::regprocedure AS f, s.setting, s.value
               FROM pg_catalog.pg_proc AS p,
                    (VALUES ('search_path', 'pg_catalog, pg_temp'), ('jit', 'off')) AS s(setting, value)
              WHERE p.pronamespace = 'audit'::regnamespace
                AND p.proname NOT IN ('_context', 'changed_columns', '_rename_keys')
                AND p.proname NOT LIKE '\_mark\_commit\_%'
                AND NOT EXISTS (SELECT FROM pg_catalog.unnest(p.proconfig) AS c(config)
                                 WHERE pg_catalog.split_part(c.config, '=', 1) = s.setting) LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET %I = %s', r.f, r.setting, r.value);
    END LOOP;
END
$$;

-- Readers: the NOLOGIN role pgaudit_reader (created when the installer may create roles) may
-- read the log and call the query functions; grant it to the people who review history.
DO $$
DECLARE
    f regprocedure;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgaudit_reader')
       AND (SELECT r.rolsuper OR r.rolcreaterole FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        CREATE ROLE pgaudit_reader NOLOGIN;
        COMMENT ON ROLE pgaudit_reader IS 'Reads the pgaudit_tool audit log (history, reconstruction, verify). Grant it to reviewers.';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgaudit_reader') THEN
        GRANT USAGE ON SCHEMA audit TO pgaudit_reader;
        GRANT SELECT ON audit.tracked_table, audit.tracked_schema, audit.transaction, audit.table_layout,
                        audit.change, audit.seal, audit.history, audit.history_columns,
                        audit.history_break, audit.journal, audit.alert, audit.watch_cursor, audit.guard,
                        audit.relocation, audit.home, audit.partitioning, audit.retired_partition,
                        audit.retired_block, audit.retired_row, audit.hold TO pgaudit_reader;
        -- alembic's version table (absent when the SQL is run by hand): readers check it too.
        IF pg_catalog.to_regclass('audit.schema_version') IS NOT NULL THEN
            GRANT SELECT ON audit.schema_version TO pgaudit_reader;
        END IF;
        -- The query functions (history's changed_columns, pk, row_at, table_at, diff, blame,
        -- status, verify, unsealed, doctor and their helpers): every function that runs with
        -- its caller's privileges (not SECURITY DEFINER, not a trigger function), so a reader
        -- can read through them only what it may SELECT, and write nothing.
        FOR f IN SELECT p.oid FROM pg_catalog.pg_proc AS p
                  WHERE p.pronamespace = 'audit'::regnamespace AND p.prokind = 'f' AND NOT p.prosecdef
                    AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype) LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO pgaudit_reader', f);
        END LOOP;
    END IF;
END
$$;


-- The partitioned log (12_partition.sql): the rows of an unpartitioned log (before revision
-- 0009) move into partitions, then partitions are made ahead of now, before the commit marker
-- exists on the new table (moved rows keep their commit times).
SELECT audit._partition_legacy();
SELECT pg_catalog.count(*) FROM audit._partition_ahead();
-- Readers read the log through its parents; doctor and audit.archivable() read partitions.
DO $$
DECLARE
    v_part regclass;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgaudit_reader') THEN
        FOR v_part IN SELECT p.partition FROM audit.partitions() AS p LOOP
            EXECUTE pg_catalog.format('GRANT SELECT ON %s TO pgaudit_reader', v_part);
        END LOOP;
    END IF;
END
$$;

-- The commit marker: deferred to COMMIT, it stamps each audited transaction with its commit
-- time; one trigger and function per partition of audit.transaction (12_partition.sql), made
-- after the rows of an unpartitioned log moved in (they keep their commit times).
SELECT pg_catalog.count(audit._partition_marker(p.partition)) FROM audit.partitions() AS p WHERE p.log = 'transaction';

-- The guard event triggers, when the installer is a superuser (re-created when their definition
-- changed); then every capture function in this version's form, with or without the layout check.
SELECT audit.install_guards();
SELECT audit._rewrite_all(true);
