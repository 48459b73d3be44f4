-- pgaudit_tool: access model, guards and doctor.
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

CREATE OR REPLACE FUNCTION audit._owner() RETURNS regrole
LANGUAGE sql STABLE AS $$
    SELECT n.nspowner::regrole FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'audit'
$$;

COMMENT ON FUNCTION audit._owner() IS 'Internal. The owner role of the audit schema.';


CREATE OR REPLACE FUNCTION audit._is_owner() RETURNS boolean
LANGUAGE sql STABLE AS $$
    -- The login role: inside the SECURITY DEFINER guards current_user is the owner itself.
    SELECT pg_catalog.pg_has_role(session_user, audit._owner(), 'MEMBER')
$$;

COMMENT ON FUNCTION audit._is_owner() IS 'Internal. Whether the login role is a member of the audit owner role.';


CREATE OR REPLACE FUNCTION audit._guard_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
-- ddl_command_end of ALTER TABLE and CREATE TABLE: (1) for everyone, rewrite the capture
-- function of every audited table whose columns the command changed, and give new partitions of
-- audited tables their capture triggers; (2) unless the owner of the audit schema ran the
-- command, refuse capture triggers that are no longer ENABLE ALWAYS.
-- (SECURITY DEFINER: to read the registry and rewrite functions, which other roles cannot.)
DECLARE
    v_tables oid[];      -- the relations the command created or altered
    v_parents oid[];     -- those after which new partitions are looked for
    r record;
BEGIN
    -- New partitions are looked for after CREATE TABLE and after ALTER TABLE of a partitioned
    -- table only: the ALTER TABLE that enables the triggers of a leaf partition fires this guard
    -- again, which must not recurse from partition to partition.
    SELECT pg_catalog.array_agg(DISTINCT c.objid),
           pg_catalog.array_agg(DISTINCT c.objid) FILTER (WHERE c.command_tag = 'CREATE TABLE' OR k.relkind = 'p')
      INTO v_tables, v_parents
      FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
      JOIN pg_catalog.pg_class AS k ON k.oid = c.objid
     WHERE c.classid = 'pg_catalog.pg_class'::regclass;
    FOR r IN SELECT x.relid
               FROM audit.tracked_table AS x
              WHERE x.enabled AND x.relid = ANY (v_tables)
                AND audit._layout_now(x.relid::regclass) IS DISTINCT FROM x.generated_layout LOOP
        PERFORM audit._rewrite_after_ddl(r.relid::regclass);
    END LOOP;
    -- New partitions of audited tables (CREATE TABLE ... PARTITION OF, ATTACH PARTITION) get
    -- their capture triggers, so that writes made directly to them are captured too.
    FOR r IN SELECT m.member, x.capture_function
               FROM audit.tracked_table AS x, audit._members(x.relid::regclass) AS m(member)
              WHERE x.enabled
                AND x.relid IN (SELECT a.relid FROM unnest(v_parents) AS p(objid),
                                       pg_catalog.pg_partition_ancestors(p.objid) AS a)
                AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger AS g
                                 WHERE g.tgrelid = m.member AND g.tgname = ANY (audit._trigger_names())) LOOP
        PERFORM audit._create_member_triggers(r.member, r.capture_function);
    END LOOP;
    IF audit._is_owner() THEN
        RETURN;
    END IF;
    FOR r IN SELECT t.objid FROM unnest(v_tables) AS t(objid) LOOP
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
    'Internal. Event trigger (ddl_command_end of ALTER TABLE and CREATE TABLE): rewrites the capture function of audited tables whose columns changed, creates the capture triggers of their new partitions; refuses, for anyone but the audit owner, DDL that leaves a capture trigger of an audited table disabled or not ENABLE ALWAYS.';

REVOKE ALL ON FUNCTION audit._guard_ddl() FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._guarded() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM pg_catalog.pg_event_trigger AS e
                    WHERE e.evtname = 'pgaudit_guard_ddl' AND e.evtenabled = 'A'
                      AND e.evtfoid = 'audit._guard_ddl()'::pg_catalog.regprocedure)
$$;

COMMENT ON FUNCTION audit._guarded() IS
    'Internal. Whether the guard event trigger is installed and ENABLE ALWAYS, so that it rewrites capture functions after ALTER TABLE (otherwise they check the column layout at every statement).';


CREATE OR REPLACE FUNCTION audit._guard_drop() RETURNS event_trigger
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


CREATE OR REPLACE FUNCTION audit.install_guards() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RETURN false;
    END IF;
    -- A guard of an older version that fired on other commands is replaced.
    IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger
                WHERE evtname = 'pgaudit_guard_ddl' AND evttags IS DISTINCT FROM '{ALTER TABLE,CREATE TABLE}') THEN
        DROP EVENT TRIGGER pgaudit_guard_ddl;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgaudit_guard_ddl') THEN
        CREATE EVENT TRIGGER pgaudit_guard_ddl ON ddl_command_end
            WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE')
            EXECUTE FUNCTION audit._guard_ddl();
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgaudit_guard_drop') THEN
        CREATE EVENT TRIGGER pgaudit_guard_drop ON sql_drop EXECUTE FUNCTION audit._guard_drop();
    END IF;
    ALTER EVENT TRIGGER pgaudit_guard_ddl ENABLE ALWAYS;
    ALTER EVENT TRIGGER pgaudit_guard_drop ENABLE ALWAYS;
    -- Capture functions no longer need their per-statement layout check.
    PERFORM audit._rewrite_all();
    RETURN true;
END
$$;

COMMENT ON FUNCTION audit.install_guards() IS
    'Installs the event triggers that guard capture and keep capture functions current after ALTER TABLE (needs superuser; returns false without it). Run by install.';


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

COMMENT ON FUNCTION audit.doctor() IS
    'Checks that auditing is intact: capture triggers present and ENABLE ALWAYS, capture up to date after DDL, audited tables present, keyed and not renamed, every table of an audited schema audited, no privilege drift on the audit schema, guards enabled, hash chain intact. One row per problem, with the SQL that fixes it when there is a safe fix.';
