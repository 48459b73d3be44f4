-- pgaudit_tool schema revision 0002: capture functions without a per-statement layout check.
--
-- Revision 0001's capture functions read the table's column layout from the catalog at each
-- statement (about 14 µs) to notice ALTER TABLE. Where the guard event trigger exists, it now
-- rewrites the capture function of an audited table after any ALTER TABLE that changed its
-- columns (audit._rewrite_after_ddl), so the function needs no check; without the guard the
-- check stays. audit.tracked_table.layout_check records which kind each function is. Capture
-- functions also write the transaction record themselves: the SECURITY DEFINER writer of 0001
-- goes (functions/99_finish.sql rewrites every capture function in the same transaction).

ALTER TABLE audit.tracked_table ADD COLUMN layout_check boolean NOT NULL DEFAULT true;

COMMENT ON COLUMN audit.tracked_table.layout_check IS
    'Whether the capture function checks the table''s column layout at every statement (true: no guard event trigger rewrites it after ALTER TABLE). false: the guard keeps it current.';

DROP FUNCTION IF EXISTS audit._capture_function_sql(oid);
DROP FUNCTION IF EXISTS audit._log_transaction(xid8);
