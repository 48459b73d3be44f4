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
-- the owner role; the same for the triggers of row-limit guards (audit.guard(), 09_guard.sql)
-- and guarded tables. Without superuser (managed services) there are no guards: audit.doctor()
-- and audit.status() detect what they would have refused.

CREATE OR REPLACE FUNCTION audit._owner() RETURNS regrole
LANGUAGE sql STABLE AS $$
    SELECT n.nspowner::regrole FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'audit'
$$;

COMMENT ON FUNCTION audit._owner() IS 'Internal. The owner role of the audit schema.';


CREATE OR REPLACE FUNCTION audit._is_owner() RETURNS boolean
LANGUAGE sql STABLE AS $$
    -- The login role: inside the SECURITY DEFINER guards current_user is the owner itself. Not
    -- while a revert writes (its plan table exists): code of the tables' owners runs then, in the
    -- reverter's session, and must not pass for the audit owner (audit._revert_wrapper_sql).
    SELECT pg_catalog.pg_has_role(session_user, audit._owner(), 'MEMBER')
       AND pg_catalog.to_regclass('pg_temp.pgaudit_revert_plan') IS NULL
$$;

COMMENT ON FUNCTION audit._is_owner() IS 'Internal. Whether the login role is a member of the audit owner role, outside the writing of a revert (where code of the tables'' owners runs in its session).';


CREATE OR REPLACE FUNCTION audit._type_users(p_type oid) RETURNS SETOF oid
LANGUAGE sql STABLE AS $$
    -- The audited tables with a column of this type, or of a type made of it (array, domain,
    -- composite, range), at any depth.
    WITH RECURSIVE dep(classid, objid) AS (
        SELECT 'pg_catalog.pg_type'::regclass::oid, p_type
        UNION
        SELECT d.classid, d.objid
          FROM dep JOIN pg_catalog.pg_depend AS d ON d.refclassid = dep.classid AND d.refobjid = dep.objid
         WHERE d.classid IN ('pg_catalog.pg_type'::regclass, 'pg_catalog.pg_class'::regclass)
    )
    SELECT x.relid FROM audit.tracked_table AS x
     WHERE x.enabled AND x.relid IN (SELECT dep.objid FROM dep WHERE dep.classid = 'pg_catalog.pg_class'::regclass)
$$;

COMMENT ON FUNCTION audit._type_users(oid) IS
    'Internal. The audited tables that have a column of a type or of a type built on it (array, domain, composite, range).';


CREATE OR REPLACE FUNCTION audit._audited_of(p_rel oid) RETURNS oid
LANGUAGE sql STABLE AS $$
    -- The enabled audited table that is p_rel or a partitioned ancestor of it, if any.
    SELECT x.relid FROM audit.tracked_table AS x
     WHERE x.enabled AND (x.relid = p_rel OR x.relid IN (SELECT a.relid FROM pg_catalog.pg_partition_ancestors(p_rel) AS a))
     LIMIT 1
$$;

COMMENT ON FUNCTION audit._audited_of(oid) IS 'Internal. The enabled audited table a table belongs to (itself or a partitioned ancestor).';


CREATE OR REPLACE FUNCTION audit._has_rows(p_rel regclass) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_found boolean;
BEGIN
    -- Only the guards call it, as a superuser: row-level security policies are not applied.
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM ONLY %s)', p_rel) INTO v_found;
    RETURN v_found;
END
$$;

COMMENT ON FUNCTION audit._has_rows(regclass) IS 'Internal. Whether a table holds rows of its own (partitions not counted).';


CREATE OR REPLACE FUNCTION audit._inheritance(p_tables oid[] DEFAULT NULL)
RETURNS TABLE (child regclass, parent regclass)
LANGUAGE sql STABLE AS $$
    -- Inheritance (INHERITS, not partitioning) of which one side is an enabled audited table:
    -- statements on the parent change the child's rows, which neither the child's triggers nor
    -- the key cover. Given p_tables, only the links of which one side is among them (found
    -- through the catalog's indexes: the DDL guard asks at every command, in a database that
    -- may hold thousands of partitions); all of them otherwise.
    SELECT i.inhrelid::regclass, i.inhparent::regclass
      FROM (SELECT h.inhrelid, h.inhparent FROM pg_catalog.pg_inherits AS h
             WHERE p_tables IS NULL
            UNION
            SELECT h.inhrelid, h.inhparent FROM pg_catalog.pg_inherits AS h
             WHERE h.inhrelid OPERATOR(pg_catalog.=) ANY (p_tables)
            UNION
            SELECT h.inhrelid, h.inhparent FROM pg_catalog.pg_inherits AS h
             WHERE h.inhparent OPERATOR(pg_catalog.=) ANY (p_tables)) AS i
      JOIN pg_catalog.pg_class AS k ON k.oid OPERATOR(pg_catalog.=) i.inhrelid
     WHERE NOT k.relispartition
       AND EXISTS (SELECT FROM audit.tracked_table AS x WHERE x.enabled AND x.relid IN (i.inhrelid, i.inhparent))
$$;

-- Versions before this one had audit._inheritance() with no argument, which CREATE OR REPLACE
-- leaves beside this one: dropped right away, before any guarded command (an older guard's call
-- of audit._inheritance() now reaches this one through its default).
DROP FUNCTION IF EXISTS audit._inheritance();

COMMENT ON FUNCTION audit._inheritance(oid[]) IS 'Internal. Inheritance (not partitioning) between tables of which one is audited (of which one side is among the given tables, when given).';


CREATE OR REPLACE FUNCTION audit._guard_partitions(p_parents oid[]) RETURNS void
LANGUAGE plpgsql AS $$
-- Part of audit._guard_ddl (run with its rights): partitions attached to or detached from the
-- audited tables among p_parents (and their ancestors).
DECLARE
    r record;
BEGIN
    -- New partitions of audited tables (CREATE TABLE ... PARTITION OF, ATTACH PARTITION) get
    -- their capture triggers, so that writes made directly to them are captured too; one that
    -- brings triggers of its own under their names is refused (the owner's are replaced). Rows a
    -- partition brought along appear in the table without having been logged: a break.
    FOR r IN SELECT m.member, x.relid, x.capture_function,
                    pg_catalog.bool_or(p.problem NOT IN ('missing', 'not ENABLE ALWAYS')) AS altered,
                    NOT pg_catalog.bool_or(p.problem IS NULL OR p.problem = 'not ENABLE ALWAYS') AS fresh
               FROM audit.tracked_table AS x, audit._members(x.relid::regclass) AS m(member),
                    audit._member_trigger_problems(m.member, audit._capture_fn(x.relid)) AS p
              WHERE x.enabled
                AND x.relid IN (SELECT a.relid FROM pg_catalog.unnest(p_parents) AS p(objid),
                                       pg_catalog.pg_partition_ancestors(p.objid) AS a)
              GROUP BY m.member, x.relid, x.capture_function
             HAVING pg_catalog.bool_or(p.problem IS NOT NULL AND p.problem <> 'not ENABLE ALWAYS') LOOP
        IF r.altered AND NOT audit._is_owner() THEN
            RAISE EXCEPTION 'partition % of audited table % has triggers of its own under the names of the capture triggers', r.member, r.relid::regclass
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Drop them before attaching it: capture installs its own.';
        END IF;
        PERFORM audit._create_member_triggers(r.member, r.capture_function);
        IF r.fresh AND audit._has_rows(r.member) THEN
            PERFORM audit._record_break(r.relid, pg_catalog.format('partition %s was attached with rows', r.member));
        END IF;
    END LOOP;
    -- Partitions detached from an audited table: their rows leave it unlogged (a break), and
    -- their capture triggers go.
    FOR r IN SELECT g.tgrelid::regclass AS member, x.relid
               FROM audit.tracked_table AS x
               JOIN pg_catalog.pg_trigger AS g ON g.tgfoid = audit._capture_fn(x.relid) AND g.tgname = 'pgaudit_insert'
              WHERE x.enabled AND x.relid = ANY (p_parents)
                AND g.tgrelid NOT IN (SELECT audit._members(x.relid::regclass)) LOOP
        IF audit._has_rows(r.member) THEN
            PERFORM audit._record_break(r.relid, pg_catalog.format('partition %s was detached with rows', r.member));
        END IF;
        PERFORM audit._drop_member_triggers(r.member);
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._guard_partitions(oid[]) IS
    'Internal. Part of the DDL guard: capture triggers for partitions attached to audited tables (refused when they bring their own under those names, unless by the audit owner) and breaks in history for partitions attached or detached with rows; the triggers of detached partitions dropped.';


CREATE OR REPLACE FUNCTION audit._guard_capture_triggers(p_tables oid[], p_created oid[]) RETURNS void
LANGUAGE plpgsql AS $$
-- Part of audit._guard_ddl (run with its rights), for anyone but the audit owner: every capture
-- trigger of the audited tables the command touched (p_tables; p_created: those one of whose
-- triggers it created or replaced) exactly as enable created it.
DECLARE
    r record;
BEGIN
    -- Every member of every audited table the command touched (a partition attached with
    -- triggers of its own is one the command did not name).
    FOR r IN SELECT p.member, p.trigger_name, p.problem, (p.member::oid = ANY (coalesce(p_created, '{}'))) AS created
               FROM (SELECT DISTINCT audit._audited_of(t.objid) AS relid FROM pg_catalog.unnest(p_tables) AS t(objid)) AS a,
                    LATERAL audit._trigger_problems(a.relid::regclass) AS p
              WHERE a.relid IS NOT NULL AND p.problem IS NOT NULL AND p.problem <> 'missing' LOOP
        IF r.problem = 'not ENABLE ALWAYS' AND r.created THEN
            -- Created or replaced as it should be, but CREATE TRIGGER cannot say ALWAYS.
            EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', r.member, r.trigger_name);
            CONTINUE;
        END IF;
        RAISE EXCEPTION 'capture trigger % of audited table % cannot be changed: it would %', r.trigger_name, r.member,
                CASE r.problem WHEN 'not ENABLE ALWAYS' THEN 'no longer be ENABLE ALWAYS'
                               WHEN 'runs the capture function under another name' THEN 'be renamed'
                               ELSE r.problem END
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Only the owner of the audit schema can change or stop auditing (pgaudit-tool disable).';
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._guard_capture_triggers(oid[], oid[]) IS
    'Internal. Part of the DDL guard: refuses a capture trigger of a touched audited table left other than as enable created it (a capture trigger created or replaced as it should be is made ENABLE ALWAYS).';


CREATE OR REPLACE FUNCTION audit._guard_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
-- ddl_command_end of ALTER TABLE, CREATE TABLE, CREATE TRIGGER, ALTER TRIGGER and ALTER TYPE.
-- For everyone: follow a replaced key (refuse a table left without one), rewrite the capture
-- function of every audited table whose columns, or whose columns' types, the command changed;
-- refuse inheritance involving an audited table; give new partitions of audited tables their
-- capture triggers and record a break in history when a partition with rows was attached or
-- detached. Unless the audit owner ran the command: refuse any capture trigger left other than
-- as enable created it (another function, events, condition, columns, renamed, not ENABLE ALWAYS).
-- (SECURITY DEFINER: to read the registry and rewrite functions, which other roles cannot.)
DECLARE
    v_tables oid[];      -- the relations the command created or altered, or whose triggers it did
    v_parents oid[];     -- those after which new partitions are looked for
    v_created oid[];     -- the relations one of whose triggers it created or replaced
    v_typed oid[];       -- audited tables using a type the command altered
    r record;
BEGIN
    -- Moved and not reattached: the registry's OIDs name other tables (audit.reattach()).
    IF audit._moved() THEN
        RETURN;
    END IF;
    SELECT pg_catalog.array_agg(DISTINCT d.rel),
           pg_catalog.array_agg(DISTINCT d.rel) FILTER (WHERE d.tag = 'CREATE TABLE' OR (d.tag = 'ALTER TABLE' AND k.relkind = 'p')),
           pg_catalog.array_agg(DISTINCT d.rel) FILTER (WHERE d.tag = 'CREATE TRIGGER')
      INTO v_tables, v_parents, v_created
      FROM (SELECT CASE WHEN c.classid = 'pg_catalog.pg_class'::regclass THEN c.objid ELSE g.tgrelid END AS rel,
                   c.command_tag AS tag
              FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
              LEFT JOIN pg_catalog.pg_trigger AS g
                ON c.classid = 'pg_catalog.pg_trigger'::regclass AND g.oid = c.objid
             WHERE c.classid IN ('pg_catalog.pg_class'::regclass, 'pg_catalog.pg_trigger'::regclass)) AS d
      JOIN pg_catalog.pg_class AS k ON k.oid = d.rel;
    SELECT pg_catalog.array_agg(DISTINCT u)
      INTO v_typed
      FROM pg_catalog.pg_event_trigger_ddl_commands() AS c, audit._type_users(c.objid) AS u
     WHERE c.classid = 'pg_catalog.pg_type'::regclass;

    -- Inheritance (not partitioning) with an audited table, either way.
    FOR r IN SELECT i.child, i.parent FROM audit._inheritance(coalesce(v_tables, '{}')) AS i LOOP
        RAISE EXCEPTION 'table % cannot inherit from % while either is audited', r.child, r.parent
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Statements on the parent change the child''s rows, which capture would pair by a key that does not cover them. Use declarative partitioning.';
    END LOOP;

    FOR r IN SELECT x.relid, x.generated_layout
               FROM audit.tracked_table AS x
              WHERE x.enabled AND (x.relid = ANY (v_tables) OR x.relid = ANY (v_typed))
                AND EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = x.relid) LOOP
        IF audit._follow_key(r.relid::regclass)
           OR r.relid = ANY (v_typed)
           OR audit._layout_now(r.relid::regclass) IS DISTINCT FROM r.generated_layout THEN
            PERFORM audit._rewrite_after_ddl(r.relid::regclass);
        END IF;
    END LOOP;

    PERFORM audit._guard_partitions(v_parents);
    -- Guards (09_guard.sql): their triggers on new and detached partitions; for non-owners, any
    -- guard trigger left other than as audit.guard() created it is refused. (Nothing to do, and
    -- nothing called, without a guard: DDL an upgrade runs before 09_guard.sql is applied.)
    IF EXISTS (SELECT FROM audit.guard) THEN
        PERFORM audit._guard_after_ddl(v_tables, v_parents, v_created);
    END IF;

    IF audit._is_owner() THEN
        RETURN;
    END IF;
    PERFORM audit._guard_capture_triggers(v_tables, v_created);
END
$$;

COMMENT ON FUNCTION audit._guard_ddl() IS
    'Internal. Event trigger (ddl_command_end of ALTER TABLE, CREATE TABLE, CREATE TRIGGER, ALTER TRIGGER, ALTER TYPE): follows keys and columns of audited tables into their capture functions, refuses inheritance with audited tables, gives new partitions their capture triggers and records breaks in history for partitions attached or detached with rows; maintains and protects the triggers of row-limit guards (audit._guard_after_ddl); refuses, for anyone but the audit owner, DDL that leaves a capture trigger other than as enable created it.';

REVOKE ALL ON FUNCTION audit._guard_ddl() FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._drop_member_triggers(p_member regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT g.tgname FROM pg_catalog.pg_trigger AS g
              WHERE g.tgrelid = p_member AND g.tgname = ANY (audit._trigger_names()) LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', r.tgname, p_member);
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._drop_member_triggers(regclass) IS 'Internal. Drops the capture triggers of one table (a partition detached from an audited table).';


CREATE OR REPLACE FUNCTION audit._guard_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
-- table_rewrite: ALTER TABLE rewrites a table. When it rewrites column values (ALTER COLUMN ...
-- TYPE, with or without USING), the values change without an UPDATE for capture to see: the
-- audited table's history is broken there.
DECLARE
    v_audited oid;
BEGIN
    IF pg_catalog.pg_event_trigger_table_rewrite_reason() & 4 = 0   -- AT_REWRITE_COLUMN_REWRITE
       OR audit._moved() THEN          -- moved: the registry's OIDs name other tables
        RETURN;
    END IF;
    v_audited := audit._audited_of(pg_catalog.pg_event_trigger_table_rewrite_oid());
    IF v_audited IS NOT NULL THEN
        PERFORM audit._record_break(v_audited, 'ALTER TABLE rewrote column values (ALTER COLUMN ... TYPE)');
    END IF;
END
$$;

COMMENT ON FUNCTION audit._guard_rewrite() IS
    'Internal. Event trigger (table_rewrite): records a break in the history of an audited table whose column values ALTER TABLE rewrites.';

REVOKE ALL ON FUNCTION audit._guard_rewrite() FROM PUBLIC;


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
-- sql_drop. For everyone: after an index, a column or a constraint went (DROP TYPE ... CASCADE
-- drops columns too), follow the keys and columns of audited tables (refuse a table left
-- without a key). Unless the audit owner does it: refuse dropping an audited table, or a
-- capture trigger of a table that an audited table contains.
DECLARE
    o record;
    r record;
    v_table regclass;
BEGIN
    -- Moved and not reattached: the registry's OIDs name other tables (audit.reattach()).
    IF audit._moved() THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger_dropped_objects() AS d
                WHERE d.object_type IN ('index', 'table column', 'table constraint')) THEN
        FOR r IN SELECT x.relid, x.generated_layout FROM audit.tracked_table AS x
                  WHERE x.enabled AND EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = x.relid) LOOP
            IF audit._follow_key(r.relid::regclass)
               OR audit._layout_now(r.relid::regclass) IS DISTINCT FROM r.generated_layout THEN
                PERFORM audit._rewrite_after_ddl(r.relid::regclass);
            END IF;
        END LOOP;
    END IF;
    -- Guards (09_guard.sql): a guarded table, its partitions and guard triggers (see
    -- audit._guard_after_drop). Nothing to do without a guard.
    IF EXISTS (SELECT FROM audit.guard) THEN
        PERFORM audit._guard_after_drop();
    END IF;
    IF audit._is_owner() THEN
        RETURN;
    END IF;
    FOR o IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects() LOOP
        IF o.object_type = 'table' AND EXISTS (SELECT FROM audit.tracked_table AS x WHERE x.relid = o.objid AND x.enabled) THEN
            RAISE EXCEPTION 'table % is audited and cannot be dropped', o.object_identity
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'The owner of the audit schema must disable auditing first (pgaudit-tool disable).';
        END IF;
        IF o.object_type = 'trigger' AND o.address_names[3] = ANY (audit._trigger_names()) THEN
            -- The capture triggers of a table no audited table contains (detached) may go.
            v_table := pg_catalog.to_regclass(pg_catalog.format('%I.%I', o.address_names[1], o.address_names[2]));
            IF v_table IS NULL OR audit._audited_of(v_table) IS NOT NULL THEN
                RAISE EXCEPTION 'capture trigger % cannot be dropped', o.object_identity
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'Only the owner of the audit schema can stop auditing (pgaudit-tool disable).';
            END IF;
        END IF;
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._guard_drop() IS
    'Internal. Event trigger (sql_drop): follows the keys and columns of audited tables after indexes, columns or types are dropped (refusing a table left without a key); refuses dropping capture triggers or audited tables for non-owners; the same for guarded tables and guard triggers (audit._guard_after_drop).';

REVOKE ALL ON FUNCTION audit._guard_drop() FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit.install_guards() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RETURN false;
    END IF;
    -- A guard of an older version that fired on other commands is replaced.
    IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger
                WHERE evtname = 'pgaudit_guard_ddl'
                  AND evttags IS DISTINCT FROM '{ALTER TABLE,CREATE TABLE,CREATE TRIGGER,ALTER TRIGGER,ALTER TYPE}') THEN
        DROP EVENT TRIGGER pgaudit_guard_ddl;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgaudit_guard_ddl') THEN
        CREATE EVENT TRIGGER pgaudit_guard_ddl ON ddl_command_end
            WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'CREATE TRIGGER', 'ALTER TRIGGER', 'ALTER TYPE')
            EXECUTE FUNCTION audit._guard_ddl();
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgaudit_guard_drop') THEN
        CREATE EVENT TRIGGER pgaudit_guard_drop ON sql_drop EXECUTE FUNCTION audit._guard_drop();
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgaudit_guard_rewrite') THEN
        CREATE EVENT TRIGGER pgaudit_guard_rewrite ON table_rewrite EXECUTE FUNCTION audit._guard_rewrite();
    END IF;
    ALTER EVENT TRIGGER pgaudit_guard_rewrite ENABLE ALWAYS;
    ALTER EVENT TRIGGER pgaudit_guard_ddl ENABLE ALWAYS;
    ALTER EVENT TRIGGER pgaudit_guard_drop ENABLE ALWAYS;
    -- Capture functions no longer need their per-statement layout check.
    PERFORM audit._rewrite_all();
    RETURN true;
END
$$;

COMMENT ON FUNCTION audit.install_guards() IS
    'Installs the event triggers that guard capture and keep capture functions current after ALTER TABLE (needs superuser; returns false without it). Run by install.';


CREATE OR REPLACE FUNCTION audit._doctor_tables()
RETURNS TABLE (severity text, object text, problem text, fix text)
LANGUAGE plpgsql STABLE SET jit = off AS $$
-- Audited tables: dropped, key changed or lost, renamed, columns changed since capture was generated.
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
END
$$;

COMMENT ON FUNCTION audit._doctor_tables() IS
    'Internal. Part of audit.doctor(): the audited tables themselves (dropped, key, name, columns).';


CREATE OR REPLACE FUNCTION audit._doctor_capture()
RETURNS TABLE (severity text, object text, problem text, fix text)
LANGUAGE plpgsql STABLE SET jit = off AS $$
-- Capture triggers and functions exactly as pgaudit_tool made them; columns held back.
DECLARE
    t record;
BEGIN
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
    -- Each capture trigger exactly as enable created it, and each capture function exactly as
    -- the generator writes it from the registry (not replaced by hand), run as the audit owner.
    FOR t IN SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS qualified, p.member, p.trigger_name, p.problem
               FROM audit.tracked_table AS x
               JOIN pg_catalog.pg_class AS c ON c.oid = x.relid
               JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace,
                    LATERAL audit._trigger_problems(x.relid::regclass) AS p
              WHERE x.enabled AND p.problem IS NOT NULL LOOP
        severity := 'error'; object := t.qualified;
        problem := pg_catalog.format('capture trigger %s on %s: %s: changes may go unrecorded', t.trigger_name, t.member, t.problem);
        fix := pg_catalog.format('SELECT audit.refresh(%L)', t.qualified);
        RETURN NEXT;
    END LOOP;
    FOR t IN SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS qualified, x.capture_function, p.oid AS fn,
                    p.prosrc, p.proconfig, p.prosecdef, p.proowner, x.relid, x.layout_check
               FROM audit.tracked_table AS x
               JOIN pg_catalog.pg_class AS c ON c.oid = x.relid
               JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
               LEFT JOIN pg_catalog.pg_proc AS p ON p.oid = audit._capture_fn(x.relid)
              WHERE x.enabled AND audit._layout_now(x.relid::regclass) IS NOT DISTINCT FROM x.generated_layout LOOP
        -- (After ALTER TABLE without the guard, the layout warning above stands for this check.)
        IF t.fn IS NULL OR NOT t.prosecdef OR t.proowner <> audit._owner()::oid
           OR audit._capture_create_sql(t.capture_function, t.prosrc, t.proconfig[2:])
              IS DISTINCT FROM audit._capture_function_sql(t.relid, t.layout_check)
           OR t.proconfig[1] IS DISTINCT FROM 'search_path=pg_catalog, pg_temp' THEN
            severity := 'error'; object := t.qualified;
            problem := pg_catalog.format('capture function audit.%I is missing or differs from what pgaudit_tool generates (replaced or edited by hand)', t.capture_function);
            fix := pg_catalog.format('SELECT audit.refresh(%L)', t.qualified);
            RETURN NEXT;
        END IF;
    END LOOP;
    -- Columns not captured because they were added to a table with excluded columns.
    FOR t IN SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS qualified, a.attname::text AS col
               FROM audit.tracked_table AS x
               JOIN pg_catalog.pg_class AS c ON c.oid = x.relid
               JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
               JOIN pg_catalog.pg_attribute AS a ON a.attrelid = x.relid AND a.attnum = ANY (x.held_attnums) AND NOT a.attisdropped
              WHERE x.enabled LOOP
        severity := 'warning'; object := t.qualified;
        problem := pg_catalog.format('column %I was added after columns of the table were excluded, and is not captured until the exclusions are set again', t.col);
        fix := NULL;
        RETURN NEXT;
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._doctor_capture() IS
    'Internal. Part of audit.doctor(): capture triggers and functions, triggers left on detached partitions, columns held back.';


CREATE OR REPLACE FUNCTION audit._doctor_history()
RETURNS TABLE (severity text, object text, problem text, fix text)
LANGUAGE plpgsql STABLE SET jit = off AS $$
-- What limits history: inheritance, breaks, commit times, unaudited tables of audited schemas.
DECLARE
    t record;
BEGIN
    -- Inheritance with an audited table (refused by the guard; possible without it).
    FOR t IN SELECT i.child, i.parent FROM audit._inheritance() AS i LOOP
        severity := 'error'; object := t.child::text;
        problem := pg_catalog.format('inherits from %s while one of them is audited: changes made through the parent are not captured exactly', t.parent);
        fix := NULL;
        RETURN NEXT;
    END LOOP;
    -- Breaks in history: states before them cannot be rebuilt.
    FOR t IN SELECT b.*, coalesce(audit._qualified(b.relid::regclass), b.relid::text) AS qualified
               FROM audit.history_break AS b
               JOIN audit.tracked_table AS x ON x.relid = b.relid AND x.enabled ORDER BY b.at LOOP
        severity := 'info'; object := t.qualified;
        problem := pg_catalog.format('history broken at %s: %s (no state before it can be rebuilt or reverted to)', t.at, t.reason);
        fix := NULL;
        RETURN NEXT;
    END LOOP;
    IF NOT pg_catalog.current_setting('track_commit_timestamp')::boolean THEN
        severity := 'info'; object := 'track_commit_timestamp';
        problem := 'off: commit times are taken by a deferred trigger, which a transaction can fire before it commits, and checkpoint cannot correct them (see the README, "Time")';
        fix := NULL;
        RETURN NEXT;
    END IF;
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
END
$$;

COMMENT ON FUNCTION audit._doctor_history() IS
    'Internal. Part of audit.doctor(): inheritance, breaks in history, track_commit_timestamp, tables of audited schemas not audited.';


CREATE OR REPLACE FUNCTION audit._doctor_privileges()
RETURNS TABLE (severity text, object text, problem text, fix text)
LANGUAGE plpgsql STABLE SET jit = off AS $$
-- Privileges on the log and its functions; the guard event triggers.
DECLARE
    t record;
BEGIN
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
END
$$;

COMMENT ON FUNCTION audit._doctor_privileges() IS
    'Internal. Part of audit.doctor(): privileges on the audit schema, its tables and writer functions; the guard event triggers.';


CREATE OR REPLACE FUNCTION audit.doctor()
RETURNS TABLE (severity text, object text, problem text, fix text)
LANGUAGE plpgsql STABLE SET jit = off AS $$
-- Every check; one row per problem found. fix: SQL that repairs it safely, or NULL.
DECLARE
    t record;
BEGIN
    -- A moved schema (functions/10_move.sql): its OIDs name the wrong tables, so the checks
    -- below would only add noise until audit.reattach() has run.
    RETURN QUERY SELECT * FROM audit._move_doctor();
    IF audit._moved() THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM audit._doctor_tables();
    RETURN QUERY SELECT * FROM audit._doctor_capture();
    RETURN QUERY SELECT * FROM audit._doctor_history();
    -- Guards (09_guard.sql): their triggers, tables, counters and excepted roles.
    RETURN QUERY SELECT * FROM audit._guard_doctor();
    RETURN QUERY SELECT * FROM audit._doctor_privileges();
    RETURN QUERY SELECT * FROM audit._doctor_partitions();
    FOR t IN SELECT * FROM audit.verify() LOOP
        severity := 'error'; object := pg_catalog.format('audit.seal block %s', t.seq); problem := t.problem; fix := NULL;
        RETURN NEXT;
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit.doctor() IS
    'Checks that auditing is intact: capture triggers present and ENABLE ALWAYS, capture up to date after DDL, audited tables present, keyed and not renamed, every table of an audited schema audited, row-limit guards intact (audit.guard), no privilege drift on the audit schema, guards enabled, partitions of the log ahead of need and alike, hash chain intact. One row per problem, with the SQL that fixes it when there is a safe fix.';
