-- pgaudit_tool schema, revision 0001: access model, guards and doctor.
--
-- Owner: the role that installs the schema owns it and every object in it; the capture
-- functions run as that role (SECURITY DEFINER, pinned search_path). Nobody else can write the
-- log: there is no grant of INSERT, UPDATE, DELETE or TRUNCATE on any audit table, the writer
-- functions are not executable by PUBLIC, and without USAGE on the schema no other role can even
-- name its objects.
-- Reader: the NOLOGIN role pgaudit_reader (created when the installer may create roles) may read
-- the log and call the query functions; grant it to the people who review history.
-- Guards: installed by a superuser, two event triggers refuse to drop, disable or weaken a
-- capture trigger, or to drop an audited table, for anyone whose login role is not a member of
-- the owner role. Without superuser (managed services) there are no guards: audit.doctor() and
-- audit.status() detect what they would have refused.

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


CREATE FUNCTION audit._owner() RETURNS regrole
LANGUAGE sql STABLE AS $$
    SELECT n.nspowner::regrole FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'audit'
$$;

COMMENT ON FUNCTION audit._owner() IS 'Internal. The owner role of the audit schema.';


CREATE FUNCTION audit._is_owner() RETURNS boolean
LANGUAGE sql STABLE AS $$
    -- The login role: inside the SECURITY DEFINER guards current_user is the owner itself.
    SELECT pg_catalog.pg_has_role(session_user, audit._owner(), 'MEMBER')
$$;

COMMENT ON FUNCTION audit._is_owner() IS 'Internal. Whether the login role is a member of the audit owner role.';


CREATE FUNCTION audit._guard_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
-- ddl_command_end: after DDL on an audited table (or one of its partitions), refuse capture
-- triggers that are no longer ENABLE ALWAYS, unless the owner of the audit schema did it.
-- (SECURITY DEFINER only to read the registry, which other roles cannot see.)
DECLARE
    r record;
BEGIN
    IF audit._is_owner() THEN
        RETURN;
    END IF;
    FOR r IN SELECT DISTINCT c.objid
               FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
              WHERE c.classid = 'pg_catalog.pg_class'::regclass LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_trigger AS g
                    WHERE g.tgrelid = r.objid AND g.tgname = ANY (audit._trigger_names()) AND g.tgenabled <> 'A')
           AND EXISTS (SELECT FROM audit.tracked_table AS x
                        WHERE x.enabled AND x.relid IN (SELECT r.objid UNION ALL
                              SELECT a.relid FROM pg_catalog.pg_partition_ancestors(r.objid) AS a)) THEN
            RAISE EXCEPTION 'capture triggers of audited table % cannot be disabled', r.objid::regclass
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Only the owner of the audit schema can stop auditing (pgaudit-tool disable).';
        END IF;
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._guard_ddl() IS
    'Internal. Event trigger (ddl_command_end): refuses, for anyone but the audit owner, DDL that leaves a capture trigger of an audited table disabled or not ENABLE ALWAYS.';

REVOKE ALL ON FUNCTION audit._guard_ddl() FROM PUBLIC;


CREATE FUNCTION audit._guard_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
-- sql_drop: refuse dropping a capture trigger or an audited table, unless the owner does it.
DECLARE
    o record;
BEGIN
    IF audit._is_owner() THEN
        RETURN;
    END IF;
    FOR o IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects() LOOP
        IF o.object_type = 'table' AND EXISTS (SELECT FROM audit.tracked_table AS x WHERE x.relid = o.objid AND x.enabled) THEN
            RAISE EXCEPTION 'table % is audited and cannot be dropped', o.object_identity
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'The owner of the audit schema must disable auditing first (pgaudit-tool disable).';
        END IF;
        IF o.object_type = 'trigger'
           AND pg_catalog.split_part(o.object_identity, ' on ', 1) = ANY (audit._trigger_names()) THEN
            RAISE EXCEPTION 'capture trigger % cannot be dropped', o.object_identity
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Only the owner of the audit schema can stop auditing (pgaudit-tool disable).';
        END IF;
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._guard_drop() IS
    'Internal. Event trigger (sql_drop): refuses dropping capture triggers or audited tables for non-owners.';

REVOKE ALL ON FUNCTION audit._guard_drop() FROM PUBLIC;


CREATE FUNCTION audit.install_guards() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RETURN false;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgaudit_guard_ddl') THEN
        CREATE EVENT TRIGGER pgaudit_guard_ddl ON ddl_command_end
            WHEN TAG IN ('ALTER TABLE')
            EXECUTE FUNCTION audit._guard_ddl();
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgaudit_guard_drop') THEN
        CREATE EVENT TRIGGER pgaudit_guard_drop ON sql_drop EXECUTE FUNCTION audit._guard_drop();
    END IF;
    ALTER EVENT TRIGGER pgaudit_guard_ddl ENABLE ALWAYS;
    ALTER EVENT TRIGGER pgaudit_guard_drop ENABLE ALWAYS;
    RETURN true;
END
$$;

COMMENT ON FUNCTION audit.install_guards() IS
    'Installs the event triggers that guard capture (needs superuser; returns false without it). Run by install.';

SELECT audit.install_guards();


CREATE FUNCTION audit.doctor()
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
            severity := 'warning'; object := t.qualified;
            problem := 'columns changed since capture was generated (capture stays correct, at the cost of dynamic SQL)';
            fix := pg_catalog.format('SELECT audit.refresh(%L)', t.qualified);
            RETURN NEXT;
        END IF;
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

COMMENT ON FUNCTION audit.doctor() IS
    'Checks that auditing is intact: capture triggers present and ENABLE ALWAYS, capture up to date after DDL, audited tables present, keyed and not renamed, every table of an audited schema audited, no privilege drift on the audit schema, guards enabled, hash chain intact. One row per problem, with the SQL that fixes it when there is a safe fix.';
