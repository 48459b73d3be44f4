-- pgaudit_tool: watch. What is new to the watcher, and the alerts it stores.
--
-- "New" is a matter of visibility, not of ids: change and transaction ids are taken when a
-- transaction writes, but it becomes visible when it commits, and a long transaction commits
-- after others with higher ids. The watcher's cursor (audit.watch_cursor) is the snapshot its
-- last pass read the log with; a transaction is pending when it is visible to the reader now
-- but was not in that snapshot. Rolled-back transactions leave no row, so never show.
--
-- The two readers below are plain SQL functions (no SET clause, every name and operator
-- qualified) so that the planner inlines them: the snapshot's xmin is then a constant, and the
-- scan an index range on audit.transaction's key from that xmin, whatever the log's size.

CREATE OR REPLACE FUNCTION audit.watch_pending(p_snapshot pg_snapshot)
RETURNS SETOF audit.transaction
LANGUAGE sql STABLE AS $$
    SELECT t.*
      FROM audit.transaction AS t
     WHERE t.txid OPERATOR(pg_catalog.>=) pg_catalog.pg_snapshot_xmin(p_snapshot)
       AND NOT pg_catalog.pg_visible_in_snapshot(t.txid, p_snapshot)
$$;

COMMENT ON FUNCTION audit.watch_pending(pg_snapshot) IS
    'Audited transactions committed (visible to the caller) that were not visible in the given snapshot: what a watcher whose cursor is that snapshot has not evaluated yet. Read it in a REPEATABLE READ transaction and store pg_current_snapshot() as the next cursor.';


CREATE OR REPLACE FUNCTION audit.watch_pending_breaks(p_snapshot pg_snapshot)
RETURNS SETOF audit.history_break
LANGUAGE sql STABLE AS $$
    SELECT b.*
      FROM audit.history_break AS b
     WHERE b.txid OPERATOR(pg_catalog.>=) pg_catalog.pg_snapshot_xmin(p_snapshot)
       AND NOT pg_catalog.pg_visible_in_snapshot(b.txid, p_snapshot)
$$;

COMMENT ON FUNCTION audit.watch_pending_breaks(pg_snapshot) IS
    'History breaks (audit.history_break) committed since the given snapshot, like audit.watch_pending.';


CREATE OR REPLACE FUNCTION audit.ack_alerts(p_ids bigint[], p_by text DEFAULT session_user)
RETURNS SETOF bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE audit.alert
       SET acked_at = pg_catalog.clock_timestamp(), acked_by = p_by
     WHERE id = ANY (p_ids) AND acked_at IS NULL
    RETURNING id
$$;

COMMENT ON FUNCTION audit.ack_alerts(bigint[], text) IS
    'Acknowledges open alerts: records when and by whom (default: the login role). Returns the ids acknowledged now (already acknowledged or unknown ids are left out). pgaudit-tool alerts --ack.';
