-- pgaudit_tool schema revision 0006: guards. A guard refuses, before it commits, any single
-- statement that changes more rows of a table than allowed (per operation: INSERT, UPDATE,
-- DELETE; a guarded TRUNCATE is refused whole), unless the login role is excepted.
--
-- The registry of guards is audit.guard; the triggers that enforce them (statement-level,
-- ENABLE ALWAYS, on the table and every partition) and the function they run are in
-- functions/09_guard.sql. Each guard counts the statements it refused in a sequence of its own,
-- audit.guard_blocked_<relid> (created by audit.guard()): nextval is not transactional, so the
-- count survives the rollback of the refused statement. The server log keeps a line for each
-- refusal too ("pgaudit_tool guard: ...").

CREATE TABLE audit.guard (
    relid        oid         PRIMARY KEY,
    schema_name  text        NOT NULL,
    table_name   text        NOT NULL,
    max_rows     bigint      NOT NULL CHECK (max_rows >= 1),
    ops          text[]      NOT NULL CHECK (pg_catalog.cardinality(ops) > 0
                                             AND ops <@ '{INSERT,UPDATE,DELETE,TRUNCATE}'::text[]),
    except_roles text[]      NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    created_by   text        NOT NULL DEFAULT session_user,
    changed_at   timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    changed_by   text        NOT NULL DEFAULT session_user
);

COMMENT ON TABLE audit.guard IS
    'Guards: per-table limits on the rows one statement may change (set with audit.guard(), removed with audit.guard_remove(), listed with audit.guard_list()). A statement over the limit, by a login role not excepted, fails with SQLSTATE PGA01 and changes nothing.';
COMMENT ON COLUMN audit.guard.relid IS 'OID of the guarded table (a partitioned table''s guard covers every partition).';
COMMENT ON COLUMN audit.guard.schema_name IS 'Schema of the guarded table when the guard was last set (for display once the table is gone; the live name is read from the catalog).';
COMMENT ON COLUMN audit.guard.table_name IS 'Name of the guarded table when the guard was last set.';
COMMENT ON COLUMN audit.guard.max_rows IS 'Most rows one statement may insert, update or delete (each guarded operation counted on its own).';
COMMENT ON COLUMN audit.guard.ops IS 'Guarded operations, in the order INSERT, UPDATE, DELETE, TRUNCATE. A guarded TRUNCATE is refused whatever the number of rows.';
COMMENT ON COLUMN audit.guard.except_roles IS 'Roles (exact names) whose members are not limited: the login role (session_user) is checked, directly or through any chain of role memberships.';
COMMENT ON COLUMN audit.guard.created_at IS 'When the guard was first set.';
COMMENT ON COLUMN audit.guard.created_by IS 'Login role that first set it.';
COMMENT ON COLUMN audit.guard.changed_at IS 'When it was last set (limit, operations or excepted roles).';
COMMENT ON COLUMN audit.guard.changed_by IS 'Login role that last set it.';

REVOKE ALL ON audit.guard FROM PUBLIC;
