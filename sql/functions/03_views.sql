-- pgaudit_tool: views for people.

CREATE OR REPLACE FUNCTION audit.changed_columns(p_old jsonb, p_new jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    -- One pass over the keys of both images (those of the concatenation), no UNION: history
    -- computes this for every UPDATE it lists, and the union's sort cost twice as much.
    SELECT ARRAY(
        SELECT k FROM pg_catalog.jsonb_object_keys(coalesce(p_old, '{}') || coalesce(p_new, '{}')) AS k
         WHERE p_old -> k IS DISTINCT FROM p_new -> k ORDER BY k)
$$;

COMMENT ON FUNCTION audit.changed_columns(jsonb, jsonb) IS
    'The columns whose values differ between two row images (a column present in one image only counts), sorted.';


CREATE OR REPLACE FUNCTION audit._history_sql(p_change text, p_transaction text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
-- The query of audit.history over the given change and transaction relations (SQL text the
-- caller made safe: audit.change and audit.transaction, or with archived rows in temporary
-- tables added by pgaudit_tool.archive for history --archive).
    SELECT 'SELECT c.id,
       pg_catalog.format(''%I.%I'', c.schema_name, c.table_name) AS table_name,
       c.relid,
       CASE c.op WHEN ''I'' THEN ''INSERT'' WHEN ''U'' THEN ''UPDATE'' WHEN ''D'' THEN ''DELETE'' ELSE ''TRUNCATE'' END AS op,
       c.pk,
       c.old,
       c.new,
       c.txid,
       c.clock_at AS at,
       c.statement_at,
       c.started_at AS transaction_started_at,
       t.db_user,
       c.role,
       t.actor,
       t.context,
       t.client_addr,
       t.client_port,
       t.application_name,
       t.backend_pid
  FROM ' || p_change || ' AS c
  LEFT JOIN ' || p_transaction || ' AS t ON t.txid = c.txid AND t.started_at = c.started_at'
$$;

COMMENT ON FUNCTION audit._history_sql(text, text) IS
    'Internal. The query of the audit.history view over given change and transaction relations (one definition for the view and for history read with an archive).';

DO $$
BEGIN
    EXECUTE 'CREATE OR REPLACE VIEW audit.history AS ' || audit._history_sql('audit.change', 'audit.transaction');
END
$$;

COMMENT ON VIEW audit.history IS
    'Every captured change with the context of its transaction, one row per changed row. Filter on table_name/relid, pk, txid, at, actor or db_user.';
COMMENT ON COLUMN audit.history.id IS 'Change id (audit.change.id).';
COMMENT ON COLUMN audit.history.table_name IS 'Schema-qualified, quoted name of the table at the time of the change.';
COMMENT ON COLUMN audit.history.relid IS 'OID of the audited table.';
COMMENT ON COLUMN audit.history.op IS 'INSERT, UPDATE, DELETE or TRUNCATE.';
COMMENT ON COLUMN audit.history.pk IS 'Key of the row as a JSON object.';
COMMENT ON COLUMN audit.history.old IS 'Row before the change (null for INSERT).';
COMMENT ON COLUMN audit.history.new IS 'Row after the change (null for DELETE and TRUNCATE).';
COMMENT ON COLUMN audit.history.txid IS 'Transaction id.';
COMMENT ON COLUMN audit.history.at IS 'When the change was captured (clock time at the end of its statement).';
COMMENT ON COLUMN audit.history.statement_at IS 'Start of the client statement that made the change.';
COMMENT ON COLUMN audit.history.transaction_started_at IS 'Start of the transaction: the partition key of the log (a bound on it skips partitions).';
COMMENT ON COLUMN audit.history.db_user IS 'Login role of the session (session_user).';
COMMENT ON COLUMN audit.history.role IS 'Role that executed the statement (current_user).';
COMMENT ON COLUMN audit.history.actor IS 'Application user set with pgaudit.actor.';
COMMENT ON COLUMN audit.history.context IS 'Application context set with pgaudit.context.';
COMMENT ON COLUMN audit.history.client_addr IS 'Client address (null over a Unix socket).';
COMMENT ON COLUMN audit.history.client_port IS 'Client port (null over a Unix socket).';
COMMENT ON COLUMN audit.history.application_name IS 'application_name of the session.';
COMMENT ON COLUMN audit.history.backend_pid IS 'PID of the server process.';

REVOKE ALL ON audit.history FROM PUBLIC;
