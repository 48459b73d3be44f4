-- pgaudit_tool: last step of every install and upgrade, after the functions above.

-- Readers: the NOLOGIN role pgaudit_reader (created when the installer may create roles) may
-- read the log and call the query functions; grant it to the people who review history.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgaudit_reader')
       AND (SELECT r.rolsuper OR r.rolcreaterole FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        CREATE ROLE pgaudit_reader NOLOGIN;
        COMMENT ON ROLE pgaudit_reader IS 'Reads the pgaudit_tool audit log (history, reconstruction, verify). Grant it to reviewers.';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgaudit_reader') THEN
        GRANT USAGE ON SCHEMA audit TO pgaudit_reader;
        GRANT SELECT ON audit.tracked_table, audit.tracked_schema, audit.transaction, audit.table_layout,
                        audit.change, audit.seal, audit.history, audit.history_columns TO pgaudit_reader;
        -- alembic's version table (absent when the SQL is run by hand): readers check it too.
        IF pg_catalog.to_regclass('audit.schema_version') IS NOT NULL THEN
            GRANT SELECT ON audit.schema_version TO pgaudit_reader;
        END IF;
    END IF;
END
$$;


-- The commit marker: deferred to COMMIT, it stamps each audited transaction with its commit time.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                    WHERE tgrelid = 'audit.transaction'::regclass AND tgname = 'mark_commit') THEN
        CREATE CONSTRAINT TRIGGER mark_commit AFTER INSERT OR UPDATE ON audit.transaction
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.committed_at IS NULL)
            EXECUTE FUNCTION audit._mark_commit();
    END IF;
    -- Only when needed: ALTER TABLE would make every capture wait for this transaction.
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                    WHERE tgrelid = 'audit.transaction'::regclass AND tgname = 'mark_commit'
                      AND tgenabled = 'A') THEN
        ALTER TABLE audit.transaction ENABLE ALWAYS TRIGGER mark_commit;
    END IF;
END
$$;

-- The guard event triggers, when the installer is a superuser (re-created when their definition
-- changed); then every capture function in this version's form, with or without the layout check.
SELECT audit.install_guards();
SELECT audit._rewrite_all(true);
