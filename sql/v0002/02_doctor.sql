-- pgaudit_tool schema, revision 0002: doctor knows capture functions without the layout check.
--
-- A capture function generated without the per-statement layout check (revision 0002, guard
-- present) is wrong, not merely slower, once the table's columns change without the guard
-- rewriting it: doctor reports that as an error, and a guard gone missing under such functions too.
-- It also reports capture triggers left on a table that is no longer audited (a detached partition).

CREATE OR REPLACE FUNCTION audit.doctor()
RETURNS TABLE (severity text, object text, problem text, fix text)
LANGUAGE plpgsql STABLE AS $$
-- Every check; one row per problem found. fix: SQL that repairs it safely, or NULL.
DECLARE
    t record;
    v_key record;
BEGIN
    FOR t IN SELECT x.*, c.oid IS NOT NULL AS present,
                    CASE WHEN c.oid IS NULL THEN pg_catalog.format('%I.%I', x.schema_name, x.table_name)
                         ELSE pg_catalog.format('%I.%I', n.nspname, c.relname) END AS qualified,
                    n.nspname AS now_schema, c.relname AS now_name
               FROM audit.tracked_table AS x
               LEFT JOIN pg_catalog.pg_class AS c ON c.oid = x.relid
               LEFT JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
              WHERE x.enabled LOOP
        IF NOT t.present THEN
            severity := 'error'; object := t.qualified; problem := 'audited table was dropped'; fix := NULL;
            RETURN NEXT; CONTINUE;
        END IF;
        BEGIN
            v_key := audit._key_of(t.relid::regclass);
            IF v_key.attnums IS DISTINCT FROM t.key_attnums THEN
                severity := 'error'; object := t.qualified;
                problem := pg_catalog.format('the key changed (now %s, captured as %s)', v_key.names, t.key_columns);
                fix := pg_catalog.format('SELECT audit.refresh(%L)', t.qualified);
                RETURN NEXT;
            END IF;
        EXCEPTION WHEN object_not_in_prerequisite_state THEN
            severity := 'error'; object := t.qualified;
            problem := 'the table lost its primary key and has no replica identity index: writes to it fail';
            fix := NULL;
            RETURN NEXT;
        END;
        IF (t.now_schema, t.now_name) IS DISTINCT FROM (t.schema_name, t.table_name) THEN
            severity := 'warning'; object := t.qualified;
            problem := pg_catalog.format('renamed from %I.%I since capture was generated', t.schema_name, t.table_name);
            fix := pg_catalog.format('SELECT audit.refresh(%L)', t.qualified);
            RETURN NEXT;
        END IF;
        IF audit._layout_now(t.relid::regclass) IS DISTINCT FROM t.generated_layout THEN
            object := t.qualified; fix := pg_catalog.format('SELECT audit.refresh(%L)', t.qualified);
            IF t.layout_check THEN
                severity := 'warning';
                problem := 'columns changed since capture was generated (capture stays correct, at the cost of dynamic SQL)';
            ELSE
                severity := 'error';
                problem := 'columns changed but capture was not rewritten (the guard event trigger did not run): excluded columns may be stored under new names, writes may fail';
            END IF;
            RETURN NEXT;
        ELSIF NOT t.layout_check AND NOT audit._guarded() THEN
            severity := 'error'; object := t.qualified;
            problem := 'capture relies on the guard event trigger to follow ALTER TABLE, and the guard is missing or disabled';
            fix := pg_catalog.format('SELECT audit.refresh(%L)', t.qualified);
            RETURN NEXT;
        END IF;
    END LOOP;
    -- Capture triggers on a table no enabled audited table contains (a detached partition):
    -- its writes are not recorded, and the triggers only cost time.
    FOR t IN SELECT g.tgrelid::regclass AS rel,
                    pg_catalog.string_agg(pg_catalog.format('DROP TRIGGER %I ON %s', g.tgname, g.tgrelid::regclass), '; '
                                          ORDER BY g.tgname) AS drops
               FROM pg_catalog.pg_trigger AS g
              WHERE g.tgname = ANY (audit._trigger_names())
                AND NOT EXISTS (SELECT FROM audit.tracked_table AS x
                                 WHERE x.enabled AND EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = x.relid)
                                   AND g.tgrelid IN (SELECT audit._members(x.relid::regclass)))
              GROUP BY g.tgrelid LOOP
        severity := 'warning'; object := t.rel::text;
        problem := 'capture triggers left on a table that is not audited (a partition detached from an audited table): its changes are not recorded';
        fix := t.drops;
        RETURN NEXT;
    END LOOP;
    FOR t IN SELECT s.* FROM audit.status() AS s WHERE s.enabled AND s.state NOT IN ('ok', 'table dropped') LOOP
        severity := 'error'; object := t.table_name; problem := t.state || ': changes may go unrecorded';
        fix := pg_catalog.format('SELECT audit.refresh(%L)', t.table_name);
        RETURN NEXT;
    END LOOP;
    FOR t IN SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS qualified
               FROM audit.tracked_schema AS s
               JOIN pg_catalog.pg_namespace AS n ON n.nspname = s.schema_name
               JOIN pg_catalog.pg_class AS c ON c.relnamespace = n.oid
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND NOT EXISTS (SELECT FROM audit.tracked_table AS x WHERE x.relid = c.oid AND x.enabled) LOOP
        severity := 'warning'; object := t.qualified; problem := 'table of an audited schema is not audited';
        fix := pg_catalog.format('SELECT audit.enable(%L)', t.qualified);
        RETURN NEXT;
    END LOOP;
    -- Privileges: nobody but the owner may write the log or run its writer functions.
    FOR t IN SELECT pg_catalog.format('%I.%I', 'audit', c.relname) AS qualified, a.privilege_type,
                    CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END AS grantee
               FROM pg_catalog.pg_class AS c, pg_catalog.aclexplode(c.relacl) AS a
              WHERE c.relnamespace = 'audit'::regnamespace AND c.relkind IN ('r', 'v', 'S', 'p')
                AND a.grantee <> c.relowner
                AND (a.privilege_type <> 'SELECT' OR a.grantee = 0) LOOP
        severity := 'error'; object := t.qualified;
        problem := pg_catalog.format('%s has %s on the audit log', t.grantee, t.privilege_type);
        fix := pg_catalog.format('REVOKE %s ON %s FROM %s', t.privilege_type, t.qualified,
                                 CASE WHEN t.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE pg_catalog.quote_ident(t.grantee) END);
        RETURN NEXT;
    END LOOP;
    FOR t IN SELECT p.oid::regprocedure::text AS fn
               FROM pg_catalog.pg_proc AS p
              WHERE p.pronamespace = 'audit'::regnamespace AND p.prosecdef
                AND pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE')
                AND p.prorettype <> 'trigger'::regtype AND p.prorettype <> 'event_trigger'::regtype LOOP
        severity := 'error'; object := t.fn; problem := 'a SECURITY DEFINER writer function is executable by PUBLIC';
        fix := pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', t.fn);
        RETURN NEXT;
    END LOOP;
    IF pg_catalog.has_schema_privilege('public', 'audit', 'CREATE') THEN
        severity := 'error'; object := 'schema audit'; problem := 'PUBLIC may create objects in the audit schema';
        fix := 'REVOKE CREATE ON SCHEMA audit FROM PUBLIC';
        RETURN NEXT;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname LIKE 'pgaudit_guard_%' AND evtenabled <> 'A') THEN
        severity := 'error'; object := 'event triggers'; problem := 'a pgaudit guard event trigger is disabled';
        fix := 'SELECT audit.install_guards()';
        RETURN NEXT;
    ELSIF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname LIKE 'pgaudit_guard_%') THEN
        severity := 'info'; object := 'event triggers';
        problem := 'no guards (installed without superuser): disabling capture is detected here, not prevented';
        fix := NULL;
        RETURN NEXT;
    END IF;
    FOR t IN SELECT * FROM audit.verify() LOOP
        severity := 'error'; object := pg_catalog.format('audit.seal block %s', t.seq); problem := t.problem; fix := NULL;
        RETURN NEXT;
    END LOOP;
END
$$;
