-- pgaudit_tool: the SQL API a DBA calls from psql.
--   audit.enable(table, exclude, capture_truncate)   start (or reconfigure) capture; idempotent
--   audit.disable(table)                              stop capture; history stays; idempotent
--   audit.refresh(table)                              regenerate capture after DDL
--   audit.status()                                    what is audited and whether capture is intact
--   audit.set_actor(actor, context)                   name the application user for this transaction

CREATE OR REPLACE FUNCTION audit._key_of(p_table regclass, OUT source text, OUT attnums int2[], OUT names text[])
LANGUAGE plpgsql STABLE AS $$
-- The row key of a table: its primary key, else its replica identity index.
BEGIN
    SELECT CASE WHEN i.indisprimary THEN 'primary key' ELSE 'replica identity' END,
           ARRAY(SELECT pg_catalog.unnest(i.indkey::int2[])),   -- int2vector counts from 0; arrays from 1
           (SELECT pg_catalog.array_agg(a.attname::text ORDER BY k.o)
              FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, o)
              JOIN pg_catalog.pg_attribute AS a ON a.attrelid = p_table AND a.attnum = k.attnum)
      INTO source, attnums, names
      FROM pg_catalog.pg_index AS i
     WHERE i.indrelid = p_table
       AND (i.indisprimary
            OR (i.indisreplident
                AND (SELECT c.relreplident FROM pg_catalog.pg_class AS c WHERE c.oid = p_table) = 'i'))
     ORDER BY i.indisprimary DESC
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % has no primary key and no replica identity index, so its rows cannot be identified', p_table
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('Add a primary key, or a unique index on NOT NULL columns and run ALTER TABLE %s REPLICA IDENTITY USING INDEX <index>.', p_table);
    END IF;
END
$$;

COMMENT ON FUNCTION audit._key_of(regclass) IS
    'Internal. The key that identifies rows of a table: its primary key, else its replica identity index; raises an error when it has neither.';


CREATE OR REPLACE FUNCTION audit._check_auditable(p_table regclass) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    c pg_catalog.pg_class;
    v_parent regclass;
    v_other text;
BEGIN
    SELECT * INTO STRICT c FROM pg_catalog.pg_class WHERE oid = p_table;
    IF c.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table (relkind %); only tables and partitioned tables can be audited', p_table, c.relkind
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF c.relpersistence = 't' THEN
        RAISE EXCEPTION '% is a temporary table; temporary tables cannot be audited', p_table
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF c.relnamespace = 'audit'::regnamespace THEN
        RAISE EXCEPTION '% belongs to the audit schema and cannot be audited', p_table
            USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT pg_catalog.max(i.inhparent::regclass::text) INTO v_other
      FROM pg_catalog.pg_inherits AS i WHERE i.inhrelid = p_table AND NOT c.relispartition;
    IF v_other IS NOT NULL THEN
        RAISE EXCEPTION '% inherits from %: changes made through the parent would not be captured', p_table, v_other
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Inheritance (INHERITS) is not supported; declarative partitions are.';
    END IF;
    SELECT pg_catalog.max(i.inhrelid::regclass::text) INTO v_other
      FROM pg_catalog.pg_inherits AS i JOIN pg_catalog.pg_class AS k ON k.oid = i.inhrelid
     WHERE i.inhparent = p_table AND NOT k.relispartition;
    IF v_other IS NOT NULL THEN
        RAISE EXCEPTION '% has an inheritance child, %, whose rows its statements change too and that its key does not cover', p_table, v_other
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Inheritance (INHERITS) is not supported; declarative partitions are.';
    END IF;
    IF c.relispartition THEN
        SELECT pg_catalog.max(a.relid::oid)::regclass INTO v_parent
          FROM pg_catalog.pg_partition_ancestors(p_table) AS a WHERE a.relid <> p_table;
        RAISE EXCEPTION '% is a partition of %; audit the partitioned table instead', p_table, v_parent
            USING ERRCODE = 'wrong_object_type',
                  HINT = pg_catalog.format('Run audit.enable(%L): it captures every partition.', v_parent::text);
    END IF;
END
$$;

COMMENT ON FUNCTION audit._check_auditable(regclass) IS
    'Internal. Raises a clear error unless the relation is an ordinary or partitioned table outside the audit schema.';


CREATE OR REPLACE FUNCTION audit._members(p_table regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE AS $$
    -- The table itself and, for a partitioned table, every partition at any level.
    SELECT p_table
    UNION
    SELECT t.relid FROM pg_catalog.pg_partition_tree(p_table) AS t WHERE t.relid IS NOT NULL
$$;

COMMENT ON FUNCTION audit._members(regclass) IS
    'Internal. The tables that carry capture triggers for an audited table: itself and all its partitions.';


CREATE OR REPLACE FUNCTION audit._trigger_names() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT '{pgaudit_truncate,pgaudit_insert,pgaudit_update,pgaudit_delete}'::text[]
$$;

COMMENT ON FUNCTION audit._trigger_names() IS
    'Internal. Names of the capture triggers installed on every audited table (and partition).';


CREATE OR REPLACE FUNCTION audit._trigger_spec()
RETURNS TABLE (name text, tgtype int2, old_table text, new_table text, definition text)
LANGUAGE sql IMMUTABLE AS $$
    -- The capture triggers as enable creates them: name, pg_trigger.tgtype (statement level;
    -- 2 = BEFORE, 4 = INSERT, 8 = DELETE, 16 = UPDATE, 32 = TRUNCATE), transition tables, and
    -- the CREATE TRIGGER text after the name (%1$s: the table, %2$I: the capture function).
    VALUES ('pgaudit_truncate', 34::int2, NULL, NULL,
            'BEFORE TRUNCATE ON %1$s FOR EACH STATEMENT EXECUTE FUNCTION audit.%2$I()'),
           ('pgaudit_insert', 4::int2, NULL, 'new_rows',
            'AFTER INSERT ON %1$s REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION audit.%2$I()'),
           ('pgaudit_update', 16::int2, 'old_rows', 'new_rows',
            'AFTER UPDATE ON %1$s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION audit.%2$I()'),
           ('pgaudit_delete', 8::int2, 'old_rows', NULL,
            'AFTER DELETE ON %1$s REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION audit.%2$I()')
$$;

COMMENT ON FUNCTION audit._trigger_spec() IS
    'Internal. The definition of each capture trigger: what audit.enable() creates and audit.status() checks.';


CREATE OR REPLACE FUNCTION audit._capture_fn(p_relid oid) RETURNS regprocedure
LANGUAGE sql STABLE STRICT AS $$
    SELECT pg_catalog.to_regprocedure(pg_catalog.format('audit.%I()', x.capture_function))
      FROM audit.tracked_table AS x WHERE x.relid = p_relid
$$;

COMMENT ON FUNCTION audit._capture_fn(oid) IS 'Internal. The capture function of an audited table (null when it is missing).';


CREATE OR REPLACE FUNCTION audit._trigger_problem(
    p_trigger oid, p_function regprocedure, p_role text, p_tgtype int2, p_old_table text, p_new_table text,
    p_nargs int2, p_args bytea
) RETURNS text
LANGUAGE sql STABLE AS $$
    -- How one trigger of pgaudit_tool (capture or guard) differs from its definition (null:
    -- intact): missing, another function, other events, level or timing, other transition
    -- tables, a WHEN condition, a column list, other arguments, a constraint trigger, an
    -- extension dependency (dropped with it), not ENABLE ALWAYS. p_role names the function in
    -- the message ("capture function", "guard function").
    SELECT CASE WHEN g.oid IS NULL THEN 'missing'
                WHEN g.tgfoid IS DISTINCT FROM p_function::oid THEN
                     pg_catalog.format('runs %s instead of the %s', g.tgfoid::regprocedure, p_role)
                WHEN g.tgtype <> p_tgtype THEN 'fires on other events, at another time or level'
                WHEN g.tgoldtable IS DISTINCT FROM p_old_table OR g.tgnewtable IS DISTINCT FROM p_new_table THEN 'other transition tables'
                WHEN g.tgqual IS NOT NULL THEN 'has a WHEN condition'
                WHEN pg_catalog.cardinality(g.tgattr::int2[]) > 0 THEN 'fires for some columns only'
                WHEN g.tgnargs <> p_nargs OR g.tgargs IS DISTINCT FROM p_args THEN
                     CASE WHEN p_nargs = 0 THEN 'has arguments' ELSE 'has other arguments (another limit or guard)' END
                WHEN g.tgconstraint <> 0 OR g.tgdeferrable THEN 'is a constraint trigger'
                WHEN EXISTS (SELECT FROM pg_catalog.pg_depend AS d
                              WHERE d.classid = 'pg_catalog.pg_trigger'::regclass AND d.objid = g.oid AND d.deptype = 'x')
                     THEN 'depends on an extension'
                WHEN g.tgenabled <> 'A' THEN 'not ENABLE ALWAYS'
           END
      FROM (SELECT) AS one
      LEFT JOIN pg_catalog.pg_trigger AS g ON g.oid = p_trigger
$$;

COMMENT ON FUNCTION audit._trigger_problem(oid, regprocedure, text, int2, text, text, int2, bytea) IS
    'Internal. How one capture or guard trigger (by OID; null: missing) differs from its definition: function, events and timing, transition tables, WHEN, columns, arguments, constraint, extension dependency, ENABLE ALWAYS (null: intact).';


CREATE OR REPLACE FUNCTION audit._member_trigger_problems(p_member regclass, p_function regprocedure)
RETURNS TABLE (trigger_name text, problem text)
LANGUAGE sql STABLE AS $$
    -- How each capture trigger of one table or partition differs from what enable creates
    -- (null: intact; see audit._trigger_problem).
    SELECT s.name,
           audit._trigger_problem(g.oid, p_function, 'capture function', s.tgtype, s.old_table, s.new_table,
                                  0::int2, ''::bytea)
      FROM audit._trigger_spec() AS s
      LEFT JOIN pg_catalog.pg_trigger AS g ON g.tgrelid = p_member AND g.tgname = s.name
$$;

COMMENT ON FUNCTION audit._member_trigger_problems(regclass, regprocedure) IS
    'Internal. One row per capture trigger of one table or partition: how it differs from what audit.enable() creates (null: intact).';


CREATE OR REPLACE FUNCTION audit._trigger_problems(p_table regclass)
RETURNS TABLE (member regclass, trigger_name text, problem text)
LANGUAGE sql STABLE AS $$
    -- audit._member_trigger_problems for the table and each of its partitions, and triggers
    -- under other names that run its capture function (renamed: logging twice once refreshed).
    SELECT m.member, p.trigger_name, p.problem
      FROM audit._members(p_table) AS m(member),
           audit._member_trigger_problems(m.member, audit._capture_fn(p_table)) AS p
    UNION ALL
    SELECT g.tgrelid::regclass, g.tgname::text, 'runs the capture function under another name'
      FROM pg_catalog.pg_trigger AS g
     WHERE g.tgfoid = audit._capture_fn(p_table) AND NOT g.tgname::text = ANY (audit._trigger_names())
$$;

COMMENT ON FUNCTION audit._trigger_problems(regclass) IS
    'Internal. One row per capture trigger of an audited table or partition that is not exactly as audit.enable() created it (problem null: intact), plus any other trigger running its capture function.';


CREATE OR REPLACE FUNCTION audit._drop_triggers(p_table regclass) RETURNS void
LANGUAGE plpgsql AS $$
-- The capture triggers of a table and its partitions, and any trigger that runs its capture
-- function under another name.
DECLARE
    r record;
BEGIN
    FOR r IN SELECT tg.tgname, tg.tgrelid::regclass AS rel
               FROM pg_catalog.pg_trigger AS tg
              WHERE (tg.tgrelid IN (SELECT audit._members(p_table)) AND tg.tgname = ANY (audit._trigger_names()))
                 OR tg.tgfoid = audit._capture_fn(p_table) LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', r.tgname, r.rel);
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._drop_triggers(regclass) IS
    'Internal. Drops the capture triggers of a table and of its partitions, and any trigger running its capture function.';


CREATE OR REPLACE FUNCTION audit._create_member_triggers(p_member regclass, p_function text) RETURNS void
LANGUAGE plpgsql AS $$
-- The capture triggers (audit._trigger_spec()), ENABLE ALWAYS, on one table or partition. Those
-- it has already are kept when intact (the guard may have created them meanwhile: ENABLE ALWAYS
-- is an ALTER TABLE, which fires it); one under a capture trigger's name that is not (a table
-- attached with triggers of its own) is replaced.
DECLARE
    s record;
    v_problem text;
    v_enable text;
BEGIN
    FOR s IN SELECT * FROM audit._trigger_spec() LOOP
        -- Read again for each: the guard fired by the previous CREATE TRIGGER may have made it.
        SELECT p.problem INTO v_problem
          FROM audit._member_trigger_problems(p_member, pg_catalog.to_regprocedure(pg_catalog.format('audit.%I()', p_function))) AS p
         WHERE p.trigger_name = s.name;
        CONTINUE WHEN v_problem IS NULL OR v_problem = 'not ENABLE ALWAYS';
        IF v_problem <> 'missing' THEN
            EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', s.name, p_member);
        END IF;
        EXECUTE pg_catalog.format('CREATE TRIGGER %I ', s.name) || pg_catalog.format(s.definition, p_member, p_function);
    END LOOP;
    -- One ALTER TABLE for all of them: the guard it fires must not see some still disabled.
    SELECT pg_catalog.string_agg(pg_catalog.format('ENABLE ALWAYS TRIGGER %I', g.tgname), ', ')
      INTO v_enable
      FROM pg_catalog.pg_trigger AS g
     WHERE g.tgrelid = p_member AND g.tgname = ANY (audit._trigger_names()) AND g.tgenabled <> 'A';
    IF v_enable IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s ', p_member) || v_enable;
    END IF;
END
$$;

COMMENT ON FUNCTION audit._create_member_triggers(regclass, text) IS
    'Internal. Creates the capture triggers, ENABLE ALWAYS, on one table or partition, replacing any trigger under their names that is not as enable creates it.';

REVOKE ALL ON FUNCTION audit._create_member_triggers(regclass, text) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._create_triggers(p_table regclass, p_function text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m regclass;
BEGIN
    PERFORM audit._drop_triggers(p_table);
    -- Partitions first, the deepest first: the ALTER TABLE of a partitioned table fires the
    -- guard, which would take a partition with rows and no capture triggers yet for one just
    -- attached with rows (a break in history).
    FOR m IN SELECT x.member FROM audit._members(p_table) AS x(member)
               LEFT JOIN pg_catalog.pg_partition_tree(p_table) AS t ON t.relid = x.member
              ORDER BY coalesce(t.level, 0) DESC, x.member LOOP
        PERFORM audit._create_member_triggers(m, p_function);
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._create_triggers(regclass, text) IS
    'Internal. (Re)creates the capture triggers, ENABLE ALWAYS, on a table and on each of its partitions.';


CREATE OR REPLACE FUNCTION audit._layout_now(p_table regclass) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.array_agg(a.attnum || ':' || a.atttypid || ':' || a.attname ORDER BY a.attnum)
      FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped
$$;

COMMENT ON FUNCTION audit._layout_now(regclass) IS 'Internal. The columns of a table now, as attnum:type oid:name in order.';


CREATE OR REPLACE FUNCTION audit._write_capture_function(p_table regclass) RETURNS void
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
    v_owner := audit._owner();
    IF v_owner::oid <> current_user::regrole::oid THEN
        EXECUTE pg_catalog.format('ALTER FUNCTION audit.%I() OWNER TO %s', t.capture_function, v_owner);
    END IF;
    -- Last: its ALTER TABLE ... ENABLE ALWAYS TRIGGER fires the guard, which finds the layout
    -- already recorded above (nothing to rewrite) and may create the triggers of partitions not
    -- reached yet (audit._create_member_triggers keeps those).
    PERFORM audit._create_triggers(p_table, t.capture_function);
END
$$;

COMMENT ON FUNCTION audit._generate(regclass) IS
    'Internal. Generates the capture function of an audited table and installs its triggers.';


CREATE OR REPLACE FUNCTION audit._known_attnums(p_layout text[]) RETURNS int2[]
LANGUAGE sql IMMUTABLE STRICT AS $$
    -- The attribute numbers of a generated layout (attnum:type:name, or attnum:name before 0004).
    SELECT ARRAY(SELECT pg_catalog.split_part(e, ':', 1)::int2 FROM pg_catalog.unnest(p_layout) AS e)
$$;

COMMENT ON FUNCTION audit._known_attnums(text[]) IS
    'Internal. The attribute numbers of the columns of a layout recorded in audit.tracked_table.generated_layout.';


CREATE OR REPLACE FUNCTION audit._follow_key(p_table regclass) RETURNS boolean
LANGUAGE plpgsql AS $$
-- After DDL on an audited table: a table left without a key is refused (its rows could no longer
-- be told apart); a key replaced by another breaks history (rows of the past were paired by the
-- old key) and capture follows the new key from now on.
DECLARE
    t audit.tracked_table;
    k record;
BEGIN
    SELECT * INTO STRICT t FROM audit.tracked_table WHERE relid = p_table;
    BEGIN
        k := audit._key_of(p_table);
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        RAISE EXCEPTION 'audited table % must keep a primary key or a replica identity index: without one its rows cannot be told apart in the history', audit._qualified(p_table)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Replace the key in the same ALTER TABLE (DROP CONSTRAINT ..., ADD PRIMARY KEY ...), or have the audit owner disable auditing of the table first.';
    END;
    IF k.attnums IS NOT DISTINCT FROM t.key_attnums THEN
        RETURN false;
    END IF;
    IF k.attnums && t.excluded_attnums THEN
        RAISE EXCEPTION 'the new key of audited table % includes an excluded column, which would then be stored in the log', audit._qualified(p_table)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Choose a key without excluded columns, or change the exclusions first (audit.enable).';
    END IF;
    PERFORM audit._record_break(p_table, pg_catalog.format('the key changed from (%s) to (%s)',
        pg_catalog.array_to_string(t.key_columns, ', '), pg_catalog.array_to_string(k.names, ', ')));
    UPDATE audit.tracked_table
       SET key_source = k.source, key_attnums = k.attnums, key_columns = k.names
     WHERE relid = p_table;
    RETURN true;
END
$$;

COMMENT ON FUNCTION audit._follow_key(regclass) IS
    'Internal. After DDL: refuses an audited table left without a key; records a break in history and follows the new key when it was replaced (returns true then).';

REVOKE ALL ON FUNCTION audit._follow_key(regclass) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._exclusions_kept(t audit.tracked_table, OUT attnums int2[], OUT names text[], OUT held int2[])
LANGUAGE sql STABLE AS $$
    -- The exclusions of an audited table after DDL, its settings kept (audit._excluded_now):
    -- the columns excluded now, every name an excluded column has had, and the columns held
    -- back because they were added after the exclusions were set.
    WITH e AS (
        SELECT audit._excluded_now(t.relid, t.excluded_attnums, t.excluded_names,
                   coalesce(audit._known_attnums(t.generated_layout), (audit._columns_now(t.relid)).attnums)) AS attnums
    )
    SELECT e.attnums,
           ARRAY(SELECT DISTINCT n FROM pg_catalog.unnest(t.excluded_names || pg_catalog.array_remove(
                     audit._current_columns(t.relid, e.attnums), NULL)) AS n ORDER BY n),
           ARRAY(SELECT h FROM pg_catalog.unnest(e.attnums) AS h
                  WHERE h = ANY (t.held_attnums)
                     OR NOT (h = ANY (t.excluded_attnums) OR audit._current_columns(t.relid, ARRAY[h]) && t.excluded_names))
      FROM e
$$;

COMMENT ON FUNCTION audit._exclusions_kept(audit.tracked_table) IS
    'Internal. The excluded columns, excluded names and held columns of an audited table after DDL, its exclusion settings kept.';


CREATE OR REPLACE FUNCTION audit._rewrite_after_ddl(p_table regclass) RETURNS void
LANGUAGE plpgsql AS $$
-- After ALTER TABLE changed the columns of an audited table: takes the new column names into the
-- registry and rewrites the capture function in place. No trigger DDL, so that it can run inside
-- the guard event trigger.
DECLARE
    t audit.tracked_table;
    v_keys text[];
    e record;
BEGIN
    SELECT * INTO STRICT t FROM audit.tracked_table WHERE relid = p_table;
    v_keys := audit._current_columns(p_table, t.key_attnums);
    e := audit._exclusions_kept(t);
    UPDATE audit.tracked_table AS x
       SET schema_name = n.nspname, table_name = c.relname,
           key_columns = CASE WHEN pg_catalog.array_position(v_keys, NULL) IS NULL THEN v_keys ELSE x.key_columns END,
           excluded_attnums = e.attnums,
           excluded_columns = audit._current_columns(p_table, e.attnums),
           excluded_names = e.names,
           held_attnums = e.held
      FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = p_table AND x.relid = p_table;
    PERFORM audit._write_capture_function(p_table);
    PERFORM audit._record_layout(p_table, pg_catalog.clock_timestamp());
END
$$;

COMMENT ON FUNCTION audit._rewrite_after_ddl(regclass) IS
    'Internal. Called by the guard event trigger after ALTER TABLE changed the columns of an audited table: updates the registry''s column names and exclusions and rewrites the capture function.';

REVOKE ALL ON FUNCTION audit._rewrite_after_ddl(regclass) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._rewrite_all(p_every boolean DEFAULT false) RETURNS integer
LANGUAGE plpgsql AS $$
-- Rewrites the capture function of every audited table whose kind (with or without the layout
-- check) no longer fits, or whose columns changed since it was generated (after the guards were
-- (re)installed); p_every: of every audited table (when a revision changes the generated code).
DECLARE
    r record;
    n integer := 0;
BEGIN
    IF audit._moved() THEN
        RETURN 0;   -- the registry's OIDs name other tables until audit.reattach() (10_move.sql)
    END IF;
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


CREATE OR REPLACE FUNCTION audit._column_attnums(p_table regclass, p_columns text[]) RETURNS int2[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_col text;
    v_attnum int2;
    v_result int2[] := '{}';
BEGIN
    FOREACH v_col IN ARRAY coalesce(p_columns, '{}') LOOP
        SELECT a.attnum INTO v_attnum FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid = p_table AND a.attname = v_col AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'column % of table % does not exist', pg_catalog.quote_ident(v_col), p_table
                USING ERRCODE = 'undefined_column';
        END IF;
        IF NOT v_attnum = ANY (v_result) THEN
            v_result := v_result || v_attnum;
        END IF;
    END LOOP;
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION audit._column_attnums(regclass, text[]) IS
    'Internal. Attribute numbers of the named columns (exact, case-sensitive names); raises an error naming any column that does not exist.';


CREATE OR REPLACE FUNCTION audit.enable(
    p_table regclass,
    p_exclude text[] DEFAULT NULL,
    p_capture_truncate boolean DEFAULT NULL
) RETURNS audit.tracked_table
LANGUAGE plpgsql AS $$
DECLARE
    k record;
    v_excluded int2[];
    v_names text[];
    v_held int2[] := '{}';
    v_old audit.tracked_table;
    v_row audit.tracked_table;
BEGIN
    PERFORM audit._check_auditable(p_table);
    PERFORM audit._adopt_home();
    k := audit._key_of(p_table);
    SELECT * INTO v_old FROM audit.tracked_table WHERE relid = p_table;
    IF p_exclude IS NULL AND v_old.relid IS NOT NULL THEN
        -- Keep the current setting.
        SELECT e.attnums, e.names, e.held INTO v_excluded, v_names, v_held FROM audit._exclusions_kept(v_old) AS e;
    ELSE
        v_excluded := audit._column_attnums(p_table, p_exclude);
        v_names := ARRAY(SELECT DISTINCT n FROM pg_catalog.unnest(audit._current_columns(p_table, v_excluded)) AS n ORDER BY n);
    END IF;
    IF v_excluded && k.attnums THEN
        RAISE EXCEPTION 'cannot exclude key column(s) % of table %',
            pg_catalog.array_to_string(audit._current_columns(p_table, ARRAY(
                SELECT pg_catalog.unnest(v_excluded) INTERSECT SELECT pg_catalog.unnest(k.attnums))), ', '), p_table
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Key columns identify rows in the history; they are always stored.';
    END IF;

    IF v_old.relid IS NOT NULL AND v_old.key_attnums IS DISTINCT FROM k.attnums THEN
        PERFORM audit._record_break(p_table, pg_catalog.format('the key changed from (%s) to (%s)',
            pg_catalog.array_to_string(v_old.key_columns, ', '), pg_catalog.array_to_string(k.names, ', ')));
    END IF;

    INSERT INTO audit.tracked_table AS t (relid, schema_name, table_name, key_source, key_attnums,
        key_columns, excluded_attnums, excluded_columns, excluded_names, held_attnums, capture_truncate, capture_function)
    SELECT p_table, n.nspname, c.relname, k.source, k.attnums, k.names, v_excluded,
           audit._current_columns(p_table, v_excluded), v_names, v_held, coalesce(p_capture_truncate, true),
           pg_catalog.format('capture_%s', p_table::oid)
      FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = p_table
    ON CONFLICT (relid) DO UPDATE SET
        schema_name = excluded.schema_name,
        table_name = excluded.table_name,
        key_source = excluded.key_source,
        key_attnums = excluded.key_attnums,
        key_columns = excluded.key_columns,
        excluded_attnums = excluded.excluded_attnums,
        excluded_columns = excluded.excluded_columns,
        excluded_names = excluded.excluded_names,
        held_attnums = excluded.held_attnums,
        capture_truncate = coalesce(p_capture_truncate, t.capture_truncate),
        enabled = true,
        enabled_at = CASE WHEN t.enabled THEN t.enabled_at ELSE pg_catalog.now() END,
        enabled_by = CASE WHEN t.enabled THEN t.enabled_by ELSE session_user::text END,
        disabled_at = NULL;
    PERFORM audit._generate(p_table);
    -- History starts once the triggers exist: the table lock CREATE TRIGGER took has waited for
    -- every earlier writer, so clock time now is after every uncaptured change.
    UPDATE audit.tracked_table
       SET enabled_at = pg_catalog.clock_timestamp(),
           history_since = CASE WHEN v_old.relid IS NULL THEN pg_catalog.clock_timestamp() ELSE history_since END
     WHERE relid = p_table AND (v_old.relid IS NULL OR NOT v_old.enabled);
    PERFORM audit._record_layout(p_table, pg_catalog.clock_timestamp());
    SELECT * INTO v_row FROM audit.tracked_table WHERE relid = p_table;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION audit.enable(regclass, text[], boolean) IS
    'Starts capturing every INSERT, UPDATE, DELETE and TRUNCATE of a table (and of all its partitions), or changes the settings of an audited table. p_exclude: columns never stored (NULL keeps the current list); p_capture_truncate: store the rows removed by TRUNCATE (default true). Idempotent. Requires ownership of the table and of the audit schema (or superuser).';


CREATE OR REPLACE FUNCTION audit.disable(p_table regclass) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_fn text;
BEGIN
    SELECT capture_function INTO v_fn FROM audit.tracked_table WHERE relid = p_table AND enabled;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM audit._drop_triggers(p_table);
    EXECUTE pg_catalog.format('DROP FUNCTION IF EXISTS audit.%I()', v_fn);
    UPDATE audit.tracked_table SET enabled = false, disabled_at = pg_catalog.now() WHERE relid = p_table;
    RETURN true;
END
$$;

COMMENT ON FUNCTION audit.disable(regclass) IS
    'Stops capturing changes of a table: drops its capture triggers and function. Its history stays in audit.change. Returns false when the table was not being audited. Idempotent.';


CREATE OR REPLACE FUNCTION audit.refresh(p_table regclass) RETURNS audit.tracked_table
LANGUAGE plpgsql AS $$
DECLARE
    v_row audit.tracked_table;
BEGIN
    PERFORM 1 FROM audit.tracked_table WHERE relid = p_table AND enabled;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not audited', p_table
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('Run audit.enable(%L) first.', p_table::text);
    END IF;
    -- Keeps the settings; re-reads names (renames), the key, and the partitions.
    RETURN audit.enable(p_table);
END
$$;

COMMENT ON FUNCTION audit.refresh(regclass) IS
    'Regenerates the capture function and triggers of an audited table after DDL (renamed columns or table, new partitions, a new key), keeping its settings.';


CREATE OR REPLACE FUNCTION audit.status()
RETURNS TABLE (
    table_name text, relid oid, enabled boolean, state text, key_source text, key_columns text[],
    excluded_columns text[], capture_truncate boolean, partitions integer, triggers_expected integer,
    triggers_present integer, triggers_always integer, history_since timestamptz,
    enabled_at timestamptz, disabled_at timestamptz
)
-- No JIT: catalog functions make the planner expect thousands of rows, and compiling the plan
-- took a second where running it takes milliseconds.
LANGUAGE sql STABLE SET jit = off AS $$
    WITH t AS (
        SELECT r.*, (c.oid IS NOT NULL) AS table_exists,
               CASE WHEN c.oid IS NULL THEN pg_catalog.format('%I.%I', r.schema_name, r.table_name)
                    ELSE pg_catalog.format('%I.%I', n.nspname, c.relname) END AS qualified
          FROM audit.tracked_table AS r
          -- (A relation of the audit schema is a placeholder of audit.reattach(): the table is gone.)
          LEFT JOIN pg_catalog.pg_class AS c ON c.oid = r.relid AND c.relnamespace <> 'audit'::pg_catalog.regnamespace
          LEFT JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    ), counts AS (
        SELECT t.relid,
               (SELECT pg_catalog.count(*)::int FROM audit._members(t.relid::regclass) m) AS members,
               pg_catalog.count(p.trigger_name) FILTER (WHERE p.problem IS DISTINCT FROM 'missing'
                                                          AND p.problem IS DISTINCT FROM 'runs the capture function under another name')::int AS present,
               pg_catalog.count(p.trigger_name) FILTER (WHERE p.problem IS NULL)::int AS always,
               pg_catalog.bool_or(p.problem = 'missing') AS missing,
               pg_catalog.bool_or(p.problem NOT IN ('missing', 'not ENABLE ALWAYS')) AS altered
          FROM t
          LEFT JOIN LATERAL audit._trigger_problems(t.relid::regclass) AS p ON true
         WHERE t.table_exists AND t.enabled
         GROUP BY t.relid
    )
    SELECT t.qualified, t.relid, t.enabled,
           CASE WHEN NOT t.table_exists THEN 'table dropped'
                WHEN NOT t.enabled THEN 'disabled'
                WHEN c.altered THEN 'triggers altered'
                WHEN c.missing THEN 'triggers missing'
                WHEN c.always < c.present THEN 'triggers not ENABLE ALWAYS'
                ELSE 'ok' END,
           t.key_source,
           CASE WHEN t.table_exists THEN pg_catalog.array_remove(audit._current_columns(t.relid, t.key_attnums), NULL)
                ELSE t.key_columns END,
           CASE WHEN t.table_exists THEN pg_catalog.array_remove(audit._current_columns(t.relid, t.excluded_attnums), NULL)
                ELSE t.excluded_columns END,
           t.capture_truncate,
           coalesce(c.members - 1, 0), CASE WHEN t.enabled THEN coalesce(c.members, 0) * pg_catalog.cardinality(audit._trigger_names()) ELSE 0 END,
           coalesce(c.present, 0), coalesce(c.always, 0), t.history_since, t.enabled_at, t.disabled_at
      FROM t LEFT JOIN counts AS c ON c.relid = t.relid
     ORDER BY t.qualified
$$;

COMMENT ON FUNCTION audit.status() IS
    'What is audited: one row per registered table with its settings and the state of its capture triggers (ok; disabled; triggers altered: one runs another function, fires on other events or under a condition, or the capture function runs under another trigger name; triggers missing; triggers not ENABLE ALWAYS; table dropped).';


CREATE OR REPLACE FUNCTION audit.set_actor(p_actor text, p_context jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_context IS NOT NULL AND pg_catalog.jsonb_typeof(p_context) <> 'object' THEN
        RAISE EXCEPTION 'the context must be a JSON object, not %', pg_catalog.jsonb_typeof(p_context)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_catalog.set_config('pgaudit.actor', coalesce(p_actor, ''), true);
    PERFORM pg_catalog.set_config('pgaudit.context', coalesce(p_context::text, ''), true);
END
$$;

COMMENT ON FUNCTION audit.set_actor(text, jsonb) IS
    'Names the application user (and an optional JSON object of context) for the rest of the current transaction; recorded with its changes. Transaction-local: safe behind PgBouncer in transaction mode.';


CREATE OR REPLACE FUNCTION audit.track_schema(p_schema text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.to_regnamespace(pg_catalog.quote_ident(p_schema)) IS NULL THEN
        RAISE EXCEPTION 'schema % does not exist', pg_catalog.quote_ident(p_schema) USING ERRCODE = 'invalid_schema_name';
    END IF;
    INSERT INTO audit.tracked_schema (schema_name) VALUES (p_schema) ON CONFLICT (schema_name) DO NOTHING;
END
$$;

COMMENT ON FUNCTION audit.track_schema(text) IS
    'Records that a whole schema is audited (enable --schema), so that doctor reports tables of it that are not.';
