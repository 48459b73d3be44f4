-- pgaudit_tool schema, revision 0002: cheaper capture. The DDL guard rewrites capture functions
-- after ALTER TABLE instead of a check at every statement; capture functions record the
-- transaction context themselves instead of calling a SECURITY DEFINER writer.
--
-- In revision 0001 every capture function read the table's column layout from the catalog at
-- each statement, to notice ALTER TABLE ... ADD/DROP/RENAME COLUMN (then it ran the statement
-- dynamically). That read cost about 14 µs a statement, a quarter of the capture cost of a
-- one-row UPDATE. Where the guard event trigger exists (the schema was installed by a
-- superuser), the guard now rewrites the capture function of every audited table whose columns
-- an ALTER TABLE changed, at the end of that command and in its transaction, so the generated
-- function needs no check. Without the guard (installed without superuser) the check stays.
-- audit.tracked_table.layout_check tells which kind each capture function is; audit.doctor()
-- reports a function without the check whose table changed anyway (guard disabled or dropped).

ALTER TABLE audit.tracked_table ADD COLUMN layout_check boolean NOT NULL DEFAULT true;

COMMENT ON COLUMN audit.tracked_table.layout_check IS
    'Whether the capture function checks the table''s column layout at every statement (true: no guard event trigger rewrites it after ALTER TABLE). false: the guard keeps it current.';


CREATE FUNCTION audit._guarded() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM pg_catalog.pg_event_trigger AS e
                    WHERE e.evtname = 'pgaudit_guard_ddl' AND e.evtenabled = 'A'
                      AND e.evtfoid = 'audit._guard_ddl()'::pg_catalog.regprocedure)
$$;

COMMENT ON FUNCTION audit._guarded() IS
    'Internal. Whether the guard event trigger is installed and ENABLE ALWAYS, so that it rewrites capture functions after ALTER TABLE (otherwise they check the column layout at every statement).';


CREATE FUNCTION audit._context(p_raw text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
-- The application context of a transaction: the text of the setting pgaudit.context, which must
-- be a JSON object. (Revision 0001 called a SECURITY DEFINER writer for the whole transaction
-- record; capture functions now write it themselves, about 20 µs a transaction less.)
DECLARE
    v_context jsonb;
BEGIN
    BEGIN
        v_context := p_raw::jsonb;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'pgaudit.context is not valid JSON: %', pg_catalog.left(p_raw, 200)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Set it to a JSON object, e.g. set_config(''pgaudit.context'', ''{"ticket": "T-1"}'', true).';
    END;
    IF pg_catalog.jsonb_typeof(v_context) <> 'object' THEN
        RAISE EXCEPTION 'pgaudit.context must be a JSON object, not %', pg_catalog.jsonb_typeof(v_context)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Set it to a JSON object, e.g. set_config(''pgaudit.context'', ''{"ticket": "T-1"}'', true).';
    END IF;
    RETURN v_context;
END
$$;

COMMENT ON FUNCTION audit._context(text) IS
    'Internal. The value of the setting pgaudit.context as JSONB; raises a clear error unless it is a JSON object.';


DROP FUNCTION audit._capture_function_sql(oid);

CREATE FUNCTION audit._capture_function_sql(p_relid oid, p_layout_check boolean) RETURNS text
LANGUAGE plpgsql STABLE AS $gen$
-- Generates the per-table capture trigger function from the registry row of p_relid and the
-- table's current column layout. p_layout_check: read the layout at every statement and run the
-- statement dynamically when ALTER TABLE changed it (without the guard, see audit._guarded).
DECLARE
    t audit.tracked_table;
    v_attnums int2[];
    v_columns text[];
    v_check text := '';
BEGIN
    SELECT * INTO STRICT t FROM audit.tracked_table WHERE relid = p_relid;
    SELECT pg_catalog.array_agg(a.attnum ORDER BY a.attnum), pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
      INTO v_attnums, v_columns
      FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped;
    IF pg_catalog.array_position(audit._current_columns(p_relid, t.key_attnums), NULL) IS NOT NULL THEN
        -- A key column was dropped: every write must fail, with a sentence saying why.
        v_check := pg_catalog.format($chk$
    RAISE EXCEPTION 'audited table %% lost a key column; capture cannot identify rows', %1$s::oid::regclass
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'Restore the key, or run audit.disable() on the table.';$chk$, p_relid);
    ELSIF p_layout_check THEN
        v_check := pg_catalog.format($chk$
    -- The column layout now (one indexed catalog read). When ALTER TABLE changed it since this
    -- function was generated, the statement runs dynamically with the current key and excluded
    -- column names, and the new layout is recorded for reconstruction.
    SELECT pg_catalog.array_agg(a.attnum ORDER BY a.attnum), pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
      INTO v_attnums, v_columns
      FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = %1$s::oid AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_attnums IS DISTINCT FROM %5$L::int2[] OR v_columns IS DISTINCT FROM %6$L::text[] THEN
        v_drift := true;
        v_keys := audit._current_columns(%1$s::oid, %3$L::int2[]);
        -- Excluded: the excluded columns under their current names, and any column that now
        -- bears an excluded name (a column dropped and re-added, a type-change migration).
        v_excluded := ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                             WHERE a.attrelid = %1$s::oid AND a.attnum > 0 AND NOT a.attisdropped
                               AND (a.attnum = ANY (%4$L::int2[]) OR a.attname = ANY (%2$L::text[])));
        IF pg_catalog.array_position(v_keys, NULL) IS NOT NULL THEN
            RAISE EXCEPTION 'audited table %% lost a key column; capture cannot identify rows', %1$s::oid::regclass
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Restore the key, or run audit.disable() on the table.';
        END IF;
        PERFORM audit._record_layout(%1$s::oid, v_clock);
    END IF;$chk$,
            p_relid, t.excluded_columns, t.key_attnums, t.excluded_attnums, v_attnums, v_columns);
    END IF;
    RETURN pg_catalog.format($fn$
CREATE OR REPLACE FUNCTION audit.%1$I() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    -- Images and keys must not depend on the writer's session: fixed output settings.
    SET timezone = 'UTC' SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres'
    SET extra_float_digits = 1 SET bytea_output = 'hex' AS $body$
-- Generated for %2$s at %3$s (%8$s). Do not edit: audit.refresh() rewrites it.
DECLARE
    -- No transaction id yet: the statement changed no row (a TRUNCATE has not happened yet).
    v_txid xid8 := CASE WHEN TG_OP = 'TRUNCATE' THEN pg_catalog.pg_current_xact_id()
                        ELSE pg_catalog.pg_current_xact_id_if_assigned() END;
    v_clock timestamptz := pg_catalog.clock_timestamp();
    v_role text := coalesce(nullif(pg_catalog.current_setting(
        pg_catalog.concat('pgaudit.role_', pg_catalog.pg_trigger_depth()), true), ''), session_user::text);
    v_schema text := TG_TABLE_SCHEMA;
    v_table text := TG_TABLE_NAME;
    v_attnums int2[];
    v_columns text[];
    v_keys text[] := %5$L::text[];
    v_excluded text[] := %6$L::text[];
    v_drift boolean := false;
    v_rows bigint;
    v_open boolean;
BEGIN%9$s
    IF v_txid IS NULL THEN
        -- Nothing changed, in this statement or before it in the transaction: nothing to log,
        -- and no transaction id (with its commit record) forced on a transaction that wrote nothing.
        RETURN NULL;
    END IF;
    IF TG_RELID <> %4$s::oid THEN
        -- A statement on a partition: log it under the audited partitioned table. A table that
        -- is no partition of it any more (detached) is not audited: nothing is logged (doctor
        -- reports the triggers left on it).
        SELECT n.nspname, c.relname INTO v_schema, v_table
          FROM pg_catalog.pg_partition_ancestors(TG_RELID) AS a
          JOIN pg_catalog.pg_class AS c ON c.oid = a.relid
          JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
         WHERE a.relid = %4$s::oid;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;

    IF TG_OP = 'TRUNCATE' THEN
        IF %7$L::boolean THEN
            EXECUTE audit._capture_sql('TRUNCATE', %4$s::oid, v_keys, v_excluded, true, TG_RELID::regclass)
              USING v_txid, v_role, v_schema, v_table, v_clock;
        ELSE
            INSERT INTO audit.change (txid, relid, schema_name, table_name, op, role, statement_at, clock_at)
            VALUES (v_txid, %4$s::oid, v_schema, v_table, 'T', v_role, pg_catalog.statement_timestamp(), v_clock);
        END IF;
    ELSIF v_drift THEN
        EXECUTE audit._capture_sql(TG_OP, %4$s::oid, v_keys, v_excluded, true)
          USING v_txid, v_role, v_schema, v_table, v_clock;
    ELSIF TG_OP = 'INSERT' THEN
        %10$s;
    ELSIF TG_OP = 'UPDATE' THEN
        %11$s;
    ELSE
        %12$s;
    END IF;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    IF v_rows > 0 THEN
        -- The transaction's context, recorded once, at its first audited change; its row arms
        -- the commit marker. A marker fired early (SET CONSTRAINTS ... IMMEDIATE) is re-armed.
        SELECT x.committed_at IS NULL INTO v_open FROM audit.transaction AS x WHERE x.txid = v_txid;
        IF v_open IS NULL THEN
            INSERT INTO audit.transaction (txid, started_at, db_user, application_name, client_addr,
                                           client_port, backend_pid, actor, context)
            VALUES (v_txid, pg_catalog.now(), session_user,
                    nullif(pg_catalog.current_setting('application_name'), ''),
                    pg_catalog.inet_client_addr(), pg_catalog.inet_client_port(), pg_catalog.pg_backend_pid(),
                    nullif(pg_catalog.current_setting('pgaudit.actor', true), ''),
                    audit._context(nullif(pg_catalog.current_setting('pgaudit.context', true), '')));
        ELSIF NOT v_open THEN
            UPDATE audit.transaction SET committed_at = NULL WHERE txid = v_txid;
        END IF;
    END IF;
    RETURN NULL;
END
$body$;
$fn$,
        t.capture_function,
        pg_catalog.format('%I.%I', t.schema_name, t.table_name),
        pg_catalog.now(),
        p_relid,
        t.key_columns,
        t.excluded_columns,
        t.capture_truncate,
        CASE WHEN p_layout_check THEN 'checks the column layout at every statement'
             ELSE 'the guard event trigger rewrites it after ALTER TABLE' END,
        v_check,
        audit._capture_sql('INSERT', p_relid, t.key_columns, t.excluded_columns, false),
        audit._capture_sql('UPDATE', p_relid, t.key_columns, t.excluded_columns, false),
        audit._capture_sql('DELETE', p_relid, t.key_columns, t.excluded_columns, false));
END
$gen$;

COMMENT ON FUNCTION audit._capture_function_sql(oid, boolean) IS
    'Internal. CREATE FUNCTION statement of the capture trigger function of an audited table, generated from its audit.tracked_table row; with or without the per-statement column layout check.';


CREATE FUNCTION audit._write_capture_function(p_table regclass) RETURNS void
LANGUAGE plpgsql AS $$
-- (Re)writes the capture function of an audited table from its registry row (CREATE OR REPLACE:
-- its triggers, owner and grants stay) and records what it was generated from.
DECLARE
    v_check boolean := NOT audit._guarded();
BEGIN
    EXECUTE audit._capture_function_sql(p_table, v_check);
    UPDATE audit.tracked_table
       SET generated_at = pg_catalog.now(), generated_layout = audit._layout_now(p_table), layout_check = v_check
     WHERE relid = p_table;
END
$$;

COMMENT ON FUNCTION audit._write_capture_function(regclass) IS
    'Internal. Writes the capture function of an audited table and records its layout and kind in the registry.';


CREATE OR REPLACE FUNCTION audit._generate(p_table regclass) RETURNS void
LANGUAGE plpgsql AS $$
-- (Re)generates the capture function of an audited table from its registry row, and its triggers.
DECLARE
    t audit.tracked_table;
    v_owner regrole;
BEGIN
    SELECT * INTO STRICT t FROM audit.tracked_table WHERE relid = p_table;
    PERFORM audit._write_capture_function(p_table);
    EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION audit.%I() FROM PUBLIC', t.capture_function);
    EXECUTE pg_catalog.format('COMMENT ON FUNCTION audit.%I() IS %L', t.capture_function,
        pg_catalog.format('Capture trigger function of %s, generated by audit.enable().', p_table));
    -- The function writes the log as the owner of the audit schema, whoever enabled capture.
    SELECT n.nspowner::regrole INTO v_owner FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'audit';
    IF v_owner::oid <> current_user::regrole::oid THEN
        EXECUTE pg_catalog.format('ALTER FUNCTION audit.%I() OWNER TO %s', t.capture_function, v_owner);
    END IF;
    -- Last: its ALTER TABLE ... ENABLE ALWAYS TRIGGER fires the guard, which finds the layout
    -- already recorded above (nothing to rewrite) and may create the triggers of partitions not
    -- reached yet (audit._create_member_triggers keeps those).
    PERFORM audit._create_triggers(p_table, t.capture_function);
END
$$;


CREATE FUNCTION audit._rewrite_after_ddl(p_table regclass) RETURNS void
LANGUAGE plpgsql AS $$
-- After ALTER TABLE changed the columns of an audited table: takes the new column names into the
-- registry and rewrites the capture function in place. No trigger DDL, so that it can run inside
-- the guard event trigger. A key that changed is left to audit.refresh() (audit.doctor() reports it).
DECLARE
    t audit.tracked_table;
    v_keys text[];
    v_excluded int2[];
BEGIN
    SELECT * INTO STRICT t FROM audit.tracked_table WHERE relid = p_table;
    v_keys := audit._current_columns(p_table, t.key_attnums);
    -- Excluded: the excluded columns (renamed or not), and any column that now bears an excluded
    -- name (dropped and re-added, e.g. by a type-change migration).
    v_excluded := ARRAY(
        SELECT a.attnum FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped
           AND (a.attnum = ANY (t.excluded_attnums) OR a.attname = ANY (t.excluded_columns))
         ORDER BY a.attnum);
    UPDATE audit.tracked_table AS x
       SET schema_name = n.nspname, table_name = c.relname,
           key_columns = CASE WHEN pg_catalog.array_position(v_keys, NULL) IS NULL THEN v_keys ELSE x.key_columns END,
           excluded_attnums = v_excluded,
           excluded_columns = audit._current_columns(p_table, v_excluded)
      FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = p_table AND x.relid = p_table;
    PERFORM audit._write_capture_function(p_table);
    PERFORM audit._record_layout(p_table, pg_catalog.clock_timestamp());
END
$$;

COMMENT ON FUNCTION audit._rewrite_after_ddl(regclass) IS
    'Internal. Called by the guard event trigger after ALTER TABLE changed the columns of an audited table: updates the registry''s column names and rewrites the capture function.';

REVOKE ALL ON FUNCTION audit._rewrite_after_ddl(regclass) FROM PUBLIC;


CREATE FUNCTION audit._create_member_triggers(p_member regclass, p_function text) RETURNS void
LANGUAGE plpgsql AS $$
-- The five capture triggers, ENABLE ALWAYS, on one table or partition; those it has already are
-- kept (the guard may have created them meanwhile: ENABLE ALWAYS is an ALTER TABLE, which fires it).
DECLARE
    v_how text[] := ARRAY[
        'BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %1$s FOR EACH STATEMENT EXECUTE FUNCTION audit._stamp()',
        'BEFORE TRUNCATE ON %1$s FOR EACH STATEMENT EXECUTE FUNCTION audit.%2$I()',
        'AFTER INSERT ON %1$s REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION audit.%2$I()',
        'AFTER UPDATE ON %1$s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION audit.%2$I()',
        'AFTER DELETE ON %1$s REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION audit.%2$I()'];
    v_names text[] := audit._trigger_names();
    v_enable text;
    i integer;
BEGIN
    FOR i IN 1 .. pg_catalog.array_length(v_names, 1) LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger AS g WHERE g.tgrelid = p_member AND g.tgname = v_names[i]) THEN
            EXECUTE pg_catalog.format('CREATE TRIGGER %I ', v_names[i])
                 || pg_catalog.format(v_how[i], p_member, p_function);
        END IF;
    END LOOP;
    -- One ALTER TABLE for all of them: the guard it fires must not see some still disabled.
    SELECT pg_catalog.string_agg(pg_catalog.format('ENABLE ALWAYS TRIGGER %I', g.tgname), ', ')
      INTO v_enable
      FROM pg_catalog.pg_trigger AS g
     WHERE g.tgrelid = p_member AND g.tgname = ANY (v_names) AND g.tgenabled <> 'A';
    IF v_enable IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s ', p_member) || v_enable;
    END IF;
END
$$;

COMMENT ON FUNCTION audit._create_member_triggers(regclass, text) IS
    'Internal. Creates the capture triggers, ENABLE ALWAYS, on one table or partition.';

REVOKE ALL ON FUNCTION audit._create_member_triggers(regclass, text) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._create_triggers(p_table regclass, p_function text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m regclass;
BEGIN
    PERFORM audit._drop_triggers(p_table);
    FOR m IN SELECT audit._members(p_table) LOOP
        PERFORM audit._create_member_triggers(m, p_function);
    END LOOP;
END
$$;


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


CREATE FUNCTION audit._rewrite_all(p_every boolean DEFAULT false) RETURNS integer
LANGUAGE plpgsql AS $$
-- Rewrites the capture function of every audited table whose kind (with or without the layout
-- check) no longer fits, or whose columns changed since it was generated (after the guards were
-- (re)installed); p_every: of every audited table (when a revision changes the generated code).
DECLARE
    r record;
    n integer := 0;
BEGIN
    FOR r IN SELECT x.relid FROM audit.tracked_table AS x
              WHERE x.enabled AND EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = x.relid)
                AND (p_every OR x.layout_check IS DISTINCT FROM (NOT audit._guarded())
                     OR audit._layout_now(x.relid::regclass) IS DISTINCT FROM x.generated_layout) LOOP
        PERFORM audit._rewrite_after_ddl(r.relid::regclass);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

COMMENT ON FUNCTION audit._rewrite_all(boolean) IS
    'Internal. Rewrites the capture functions whose per-statement layout check no longer fits the guards present, or whose table''s columns changed since (p_every: all of them); returns how many.';


CREATE OR REPLACE FUNCTION audit.install_guards() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RETURN false;
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


-- The guard of revision 0001 fired on ALTER TABLE only; this one also on CREATE TABLE (new
-- partitions). Re-created when the installer may (superuser); otherwise the old one stays and
-- still calls the new function for ALTER TABLE (ATTACH PARTITION included).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgaudit_guard_ddl')
       AND (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        DROP EVENT TRIGGER pgaudit_guard_ddl;
        PERFORM audit.install_guards();
    END IF;
END
$$;

-- This revision's capture functions for every audited table (without the layout check where the
-- guard is present); nothing calls the old transaction writer any more.
SELECT audit._rewrite_all(true);
DROP FUNCTION audit._log_transaction(xid8);
