-- pgaudit_tool schema revision 0003: the acting role is the session's role.
--
-- Up to revision 0002 a BEFORE STATEMENT trigger (pgaudit_stamp, function audit._stamp) wrote
-- current_user into a transaction-local setting that the capture function read back. The
-- statement itself runs between the two and could overwrite that setting (set_config() in any
-- expression of the statement), so any writer could record a role of its choosing. Capture
-- functions now take the role from the setting "role" (SET ROLE, which needs membership) or
-- session_user, neither of which a statement can forge, and the stamp trigger goes: one trigger
-- call less per statement (about 20 µs of a one-row UPDATE).

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT g.tgrelid::regclass AS tab
               FROM pg_catalog.pg_trigger AS g
              WHERE g.tgname = 'pgaudit_stamp'
                AND g.tgfoid = pg_catalog.to_regprocedure('audit._stamp()') LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER pgaudit_stamp ON %s', r.tab);
    END LOOP;
END
$$;

DROP FUNCTION IF EXISTS audit._stamp();
