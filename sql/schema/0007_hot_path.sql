-- pgaudit_tool schema revision 0007: a cheaper write path (issue 13).
--
-- The CHECK constraint on audit.change.op goes: the executor rebuilt its expression from the
-- catalog's text at every INSERT into the log (about 10 µs of a one-row audited transaction,
-- 4% of its server time). Only the capture functions write audit.change, and they write one of
-- the four letters; the column's comment documents them.

ALTER TABLE audit.change DROP CONSTRAINT IF EXISTS change_op_check;

COMMENT ON COLUMN audit.change.op IS 'I = INSERT, U = UPDATE, D = DELETE, T = TRUNCATE (written only by the capture functions). An UPDATE that changed a key is recorded per key: the old key with new = null, the new key with old = null.';

-- Capture functions pin only the output settings their tables' types depend on: the generator's
-- helper takes them as a third argument (functions/ re-creates it).
DROP FUNCTION IF EXISTS audit._capture_create_sql(text, text);
