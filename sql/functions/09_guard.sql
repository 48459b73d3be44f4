-- pgaudit_tool: guards. Per-table limits on the rows one statement may change, enforced before
-- the statement can commit.
--   audit.guard(table, max_rows, ops, except_roles)   set (or change) the guard of a table
--   audit.guard_remove(table)                          remove it; idempotent
--   audit.guard_list()                                 every guard, its state and refusals
--
-- Mechanism: statement-level triggers named pgaudit_guard_<op> (ENABLE ALWAYS, on the table and
-- every partition) run audit._guard_fire('<guarded table OID>', '<max_rows>'), which counts the
-- rows of the statement's transition table. Over the limit, and unless the login role
-- (session_user) is a member of an excepted role, the statement fails with SQLSTATE PGA01 and
-- changes nothing; before that, the refusal is counted in the guard's sequence
-- (audit.guard_blocked_<relid>: nextval is not undone by the rollback) and written to the
-- server log as a LOG line starting 'pgaudit_tool guard:'. Tables without a guard have no such
-- trigger and pay nothing.
--
-- Only the audit owner (audit._is_owner()) sets or removes guards. Installed by a superuser,
-- the event triggers (07_access.sql) also refuse, for anyone else, dropping, disabling,
-- renaming or replacing a guard trigger, dropping a guarded table or one of its partitions, and
-- detaching a partition of a table whose guard covers DELETE or TRUNCATE; they give new
-- partitions the guard's triggers. audit.doctor() reports what they would have refused.


CREATE OR REPLACE FUNCTION audit._guard_fire() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
-- Statement-level trigger of a guarded table or partition. TG_ARGV[0]: OID of the guarded
-- table, TG_ARGV[1]: the limit. Reads nothing of the table but the number of rows in the
-- statement's transition table, and calls only pg_catalog functions and operators, named as
-- such: no code a table owner wrote (functions, operators, casts, policies) runs here as the
-- audit owner. (SECURITY DEFINER: the registry and the counter belong to the audit owner.)
DECLARE
    v_rows bigint;
    v_max bigint := TG_ARGV[1]::bigint;
    v_guard oid;
    v_found boolean;
    v_except text[];
    v_excepted boolean;
    v_counter regclass;
    v_blocked bigint;
    v_table text;
    v_where text;
    v_what text;
    v_login text;
    v_role text;
    v_ops text[];
    v_raise text;
BEGIN
    -- Within the limit (nearly always): whether a row lies beyond it, cheaper than a count.
    -- TRUNCATE goes on, v_rows null: refused whatever it removes (counting would read the table).
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        IF NOT EXISTS (SELECT FROM new_rows OFFSET v_max) THEN
            RETURN NULL;
        END IF;
        SELECT pg_catalog.count(*) INTO v_rows FROM new_rows;
    ELSIF TG_OP OPERATOR(pg_catalog.<>) 'TRUNCATE' THEN
        IF NOT EXISTS (SELECT FROM old_rows OFFSET v_max) THEN
            RETURN NULL;
        END IF;
        SELECT pg_catalog.count(*) INTO v_rows FROM old_rows;
    END IF;

    -- Over the limit (rare: everything below runs only then).
    v_guard := TG_ARGV[0]::oid;
    v_login := session_user::text;
    v_role := pg_catalog.current_setting('role');
    IF v_role OPERATOR(pg_catalog.=) 'none' THEN
        v_role := v_login;
    END IF;
    SELECT g.except_roles, g.ops, true INTO v_except, v_ops, v_found
      FROM audit.guard AS g WHERE g.relid OPERATOR(pg_catalog.=) v_guard;
    v_except := coalesce(v_except, '{}'::text[]);
    v_ops := coalesce(v_ops, ARRAY[TG_OP]);
    -- The login role, directly or through any chain of memberships (a superuser is not excepted
    -- unless it is, or is a member of, a listed role).
    WITH RECURSIVE up(id) AS (
        SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname OPERATOR(pg_catalog.=) session_user
        UNION
        SELECT m.roleid FROM pg_catalog.pg_auth_members AS m JOIN up ON m.member OPERATOR(pg_catalog.=) up.id
    )
    SELECT EXISTS (SELECT FROM up JOIN pg_catalog.pg_roles AS r ON r.oid OPERATOR(pg_catalog.=) up.id
                    WHERE r.rolname::text OPERATOR(pg_catalog.=) ANY (v_except))
      INTO v_excepted;

    SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) INTO v_table
      FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE c.oid OPERATOR(pg_catalog.=) v_guard;
    v_table := coalesce(v_table, pg_catalog.format('the table with OID %s', v_guard));
    IF TG_RELID OPERATOR(pg_catalog.=) v_guard THEN
        v_where := v_table;
    ELSE
        SELECT pg_catalog.format('%I.%I (a partition of %s)', n.nspname, c.relname, v_table) INTO v_where
          FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
         WHERE c.oid OPERATOR(pg_catalog.=) TG_RELID;
    END IF;
    IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
        v_what := pg_catalog.format('TRUNCATE of %s', v_where);
    ELSE
        v_what := pg_catalog.format('%s of %s rows of %s', TG_OP, v_rows, v_where);
    END IF;

    IF v_excepted THEN
        RAISE LOG 'pgaudit_tool guard: % allowed over the limit of % rows per statement: login role % is excepted',
            v_what, v_max, v_login;
        RETURN NULL;
    END IF;

    -- Counted and logged before the error: neither is undone by the rollback.
    v_counter := pg_catalog.to_regclass(pg_catalog.format('audit.guard_blocked_%s', v_guard));
    IF v_counter IS NOT NULL THEN
        v_blocked := pg_catalog.nextval(v_counter);
    END IF;
    IF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
        v_what := pg_catalog.format('%s refused (TRUNCATE is guarded)', v_what);
        v_ops := pg_catalog.array_remove(v_ops, 'TRUNCATE');
    ELSE
        v_what := pg_catalog.format('%s refused (limit %s rows per statement)', v_what, v_max);
        v_max := v_rows;
    END IF;
    -- The command that sets the guard as it is, but for what would let this statement through.
    IF pg_catalog.cardinality(v_ops) OPERATOR(pg_catalog.>) 0 THEN
        v_raise := pg_catalog.format('pgaudit-tool guard %s --max-rows %s --ops %s', pg_catalog.quote_literal(v_table),
                                     v_max, pg_catalog.array_to_string(v_ops, ','));
        SELECT pg_catalog.concat(v_raise, pg_catalog.string_agg(pg_catalog.format(' --except-role %s', pg_catalog.quote_literal(e)), ''))
          INTO v_raise FROM pg_catalog.unnest(v_except) AS e;
        v_raise := pg_catalog.format(CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE'
                                          THEN 'take TRUNCATE out of its operations (%s)'
                                          ELSE 'raise its limit (%s)' END, v_raise);
    END IF;
    RAISE LOG 'pgaudit_tool guard: %; login role %, role %, application %, client %, transaction %, refusal % of this guard',
        v_what, v_login, v_role,
        coalesce(pg_catalog.quote_literal(pg_catalog.current_setting('application_name')), 'none'),
        coalesce(pg_catalog.host(pg_catalog.inet_client_addr()), 'local'),
        coalesce(pg_catalog.pg_current_xact_id_if_assigned()::text, 'none'),
        coalesce(v_blocked::text, 'not counted (the counter is missing)');
    RAISE EXCEPTION USING
        ERRCODE = 'PGA01',
        MESSAGE = pg_catalog.format('pgaudit_tool guard: %s', v_what),
        DETAIL = pg_catalog.format('The login role %s is not excepted from the guard of %s; the statement changed nothing.%s',
                                   pg_catalog.quote_ident(v_login), v_table,
                                   CASE WHEN v_found IS NULL THEN ' The guard is not registered (audit.guard): see pgaudit-tool doctor.'
                                        ELSE '' END),
        HINT = pg_catalog.format('Run it as a role this guard excepts (%s), or have the owner of the audit schema %sremove the guard (pgaudit-tool guard --remove %s).',
                                 CASE WHEN pg_catalog.cardinality(v_except) OPERATOR(pg_catalog.=) 0 THEN 'none yet'
                                      ELSE pg_catalog.array_to_string(v_except, ', ') END,
                                 CASE WHEN v_raise IS NOT NULL THEN pg_catalog.format('%s or ', v_raise) ELSE '' END,
                                 pg_catalog.quote_literal(v_table));
END
$$;

COMMENT ON FUNCTION audit._guard_fire() IS
    'Internal. Statement trigger of a guarded table or partition (arguments: the guarded table''s OID, the limit): refuses, with SQLSTATE PGA01, a statement over the limit by a login role not excepted, after counting the refusal (audit.guard_blocked_<relid>) and logging it (LOG ''pgaudit_tool guard: ...''). A guarded TRUNCATE is refused whatever it removes.';

REVOKE ALL ON FUNCTION audit._guard_fire() FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._guard_trigger_spec()
RETURNS TABLE (op text, name text, tgtype int2, old_table text, new_table text, definition text)
LANGUAGE sql IMMUTABLE AS $$
    -- One trigger per guarded operation: name, pg_trigger.tgtype (statement level; 2 = BEFORE,
    -- 4 = INSERT, 8 = DELETE, 16 = UPDATE, 32 = TRUNCATE), transition table, and the CREATE
    -- TRIGGER text after the name (%1$s: the table or partition, %2$L: the guarded table's
    -- OID, %3$L: the limit). The names sort before the capture triggers' of the same event
    -- (pgaudit_guard_ < pgaudit_truncate, pgaudit_update, pgaudit_insert): a refused
    -- statement is not logged first, except DELETE (pgaudit_delete sorts first).
    VALUES ('INSERT', 'pgaudit_guard_insert', 4::int2, NULL, 'new_rows',
            'AFTER INSERT ON %1$s REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION audit._guard_fire(%2$L, %3$L)'),
           ('UPDATE', 'pgaudit_guard_update', 16::int2, 'old_rows', NULL,
            'AFTER UPDATE ON %1$s REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION audit._guard_fire(%2$L, %3$L)'),
           ('DELETE', 'pgaudit_guard_delete', 8::int2, 'old_rows', NULL,
            'AFTER DELETE ON %1$s REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION audit._guard_fire(%2$L, %3$L)'),
           ('TRUNCATE', 'pgaudit_guard_truncate', 34::int2, NULL, NULL,
            'BEFORE TRUNCATE ON %1$s FOR EACH STATEMENT EXECUTE FUNCTION audit._guard_fire(%2$L, %3$L)')
$$;

COMMENT ON FUNCTION audit._guard_trigger_spec() IS
    'Internal. The definition of each guard trigger, per operation: what audit.guard() creates and audit.guard_list() and audit.doctor() check.';


CREATE OR REPLACE FUNCTION audit._guard_args(p_relid oid, p_max_rows bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    -- pg_trigger.tgargs of a guard trigger: each argument followed by a zero byte.
    SELECT pg_catalog.decode(pg_catalog.format('%s\000%s\000', p_relid, p_max_rows), 'escape')
$$;

COMMENT ON FUNCTION audit._guard_args(oid, bigint) IS
    'Internal. The arguments (pg_trigger.tgargs) of the triggers of a guard: the guarded table''s OID and the limit.';


CREATE OR REPLACE FUNCTION audit._guard_arg_relid(p_args bytea) RETURNS oid
LANGUAGE sql IMMUTABLE AS $$
    -- The first argument of a trigger (pg_trigger.tgargs) as an OID, when it is one.
    SELECT CASE WHEN a ~ '^[0-9]{1,10}$' THEN a::oid END
      FROM pg_catalog.split_part(pg_catalog.encode(p_args, 'escape'), '\000', 1) AS a
$$;

COMMENT ON FUNCTION audit._guard_arg_relid(bytea) IS
    'Internal. The guarded table''s OID a guard trigger was created for (its first argument), or null.';


CREATE OR REPLACE FUNCTION audit._guard_member_problems(p_member regclass, p_relid oid, p_max_rows bigint, p_ops text[])
RETURNS TABLE (trigger_name text, problem text)
LANGUAGE sql STABLE AS $$
    -- How each guard trigger of one table or partition differs from what audit.guard() creates
    -- for a guard (null: intact, or not wanted and absent; see audit._trigger_problem, which
    -- also checks the arguments: the guarded table and the limit), or a guard trigger left for
    -- an operation no longer guarded.
    SELECT s.name,
           CASE WHEN NOT s.op = ANY (p_ops) THEN
                     CASE WHEN g.tgfoid = 'audit._guard_fire()'::pg_catalog.regprocedure
                          THEN 'left over: its operation is not guarded' END
                ELSE audit._trigger_problem(g.oid, 'audit._guard_fire()'::pg_catalog.regprocedure, 'guard function',
                                            s.tgtype, s.old_table, s.new_table, 2::int2,
                                            audit._guard_args(p_relid, p_max_rows))
           END
      FROM audit._guard_trigger_spec() AS s
      LEFT JOIN pg_catalog.pg_trigger AS g ON g.tgrelid = p_member AND g.tgname = s.name
$$;

COMMENT ON FUNCTION audit._guard_member_problems(regclass, oid, bigint, text[]) IS
    'Internal. One row per guard trigger name on one table or partition: how it differs from what audit.guard() creates for the given guard (null: intact, or not wanted and absent).';


CREATE OR REPLACE FUNCTION audit._guard_problems(p_relid oid)
RETURNS TABLE (member regclass, trigger_name text, problem text)
LANGUAGE sql STABLE AS $$
    -- audit._guard_member_problems for the guarded table and each of its partitions, and
    -- triggers under other names that run the guard function there (renamed).
    SELECT m.member, p.trigger_name, p.problem
      FROM audit.guard AS g,
           audit._members(g.relid::regclass) AS m(member),
           audit._guard_member_problems(m.member, g.relid, g.max_rows, g.ops) AS p
     WHERE g.relid = p_relid AND EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = g.relid)
    UNION ALL
    SELECT t.tgrelid::regclass, t.tgname::text, 'runs the guard function under another name'
      FROM pg_catalog.pg_trigger AS t
     WHERE t.tgfoid = 'audit._guard_fire()'::pg_catalog.regprocedure
       AND EXISTS (SELECT FROM audit.guard AS g WHERE g.relid = p_relid)
       AND t.tgrelid IN (SELECT audit._members(p_relid::regclass))
       AND NOT t.tgname::text IN (SELECT s.name FROM audit._guard_trigger_spec() AS s)
$$;

COMMENT ON FUNCTION audit._guard_problems(oid) IS
    'Internal. One row per guard trigger name on a guarded table and each of its partitions (problem null: intact), plus any trigger running the guard function there under another name.';


CREATE OR REPLACE FUNCTION audit._guarded_of(p_rel oid) RETURNS oid
LANGUAGE sql STABLE AS $$
    -- The guarded table that is p_rel or a partitioned ancestor of it, if any.
    SELECT g.relid FROM audit.guard AS g
     WHERE g.relid = p_rel OR g.relid IN (SELECT a.relid FROM pg_catalog.pg_partition_ancestors(p_rel) AS a)
     LIMIT 1
$$;

COMMENT ON FUNCTION audit._guarded_of(oid) IS 'Internal. The guarded table a table belongs to (itself or a partitioned ancestor), or null.';


CREATE OR REPLACE FUNCTION audit._guard_require_owner() RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT audit._is_owner() THEN
        RAISE EXCEPTION 'only the owner of the audit schema (%) can set or remove guards', audit._owner()
            USING ERRCODE = 'insufficient_privilege',
                  HINT = pg_catalog.format('Connect as %s, or as a role that is a member of it.', audit._owner());
    END IF;
END
$$;

COMMENT ON FUNCTION audit._guard_require_owner() IS
    'Internal. Raises insufficient_privilege unless the login role is a member of the audit owner role.';


CREATE OR REPLACE FUNCTION audit._check_guardable(p_table regclass) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    c pg_catalog.pg_class;
    v_schema text;
    v_parent regclass;
BEGIN
    IF p_table IS NULL THEN
        RAISE EXCEPTION 'a table to guard is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO c FROM pg_catalog.pg_class WHERE oid = p_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table with OID % does not exist', p_table::oid USING ERRCODE = 'undefined_table';
    END IF;
    SELECT n.nspname INTO v_schema FROM pg_catalog.pg_namespace AS n WHERE n.oid = c.relnamespace;
    IF c.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table (relkind %); only tables and partitioned tables can be guarded', p_table, c.relkind
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF c.relpersistence = 't' THEN
        RAISE EXCEPTION '% is a temporary table; temporary tables cannot be guarded', p_table
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF v_schema = 'audit' OR v_schema IN ('pg_catalog', 'information_schema', 'pg_toast') THEN
        RAISE EXCEPTION '% belongs to the % schema and cannot be guarded', p_table, v_schema
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF c.relispartition THEN
        SELECT pg_catalog.max(a.relid::oid)::regclass INTO v_parent
          FROM pg_catalog.pg_partition_ancestors(p_table) AS a
         WHERE a.relid <> p_table AND NOT EXISTS (SELECT FROM pg_catalog.pg_class AS k WHERE k.oid = a.relid AND k.relispartition);
        RAISE EXCEPTION '% is a partition of %; guard the partitioned table instead', p_table, v_parent
            USING ERRCODE = 'wrong_object_type',
                  HINT = pg_catalog.format('Run audit.guard(%L, ...): its guard covers every partition, also written directly.', v_parent::text);
    END IF;
END
$$;

COMMENT ON FUNCTION audit._check_guardable(regclass) IS
    'Internal. Raises a clear error unless the relation is an ordinary or partitioned table (not a partition, not temporary) outside the audit and system schemas.';


CREATE OR REPLACE FUNCTION audit._guard_ops(p_ops text[]) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $$
-- The operations of a guard, checked, upper-cased, without duplicates, in a fixed order.
DECLARE
    v_op text;
    v_all text[] := '{INSERT,UPDATE,DELETE,TRUNCATE}';
    v_upper text[] := '{}';
BEGIN
    IF p_ops IS NULL OR pg_catalog.cardinality(p_ops) = 0 THEN
        RAISE EXCEPTION 'a guard needs at least one operation: INSERT, UPDATE, DELETE or TRUNCATE'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH v_op IN ARRAY p_ops LOOP
        IF v_op IS NULL OR NOT pg_catalog.upper(pg_catalog.btrim(v_op)) = ANY (v_all) THEN
            RAISE EXCEPTION 'unknown operation %: a guard limits INSERT, UPDATE, DELETE or TRUNCATE',
                coalesce(pg_catalog.quote_literal(v_op), 'NULL')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_upper := v_upper || pg_catalog.upper(pg_catalog.btrim(v_op));
    END LOOP;
    RETURN ARRAY(SELECT a.op FROM pg_catalog.unnest(v_all) WITH ORDINALITY AS a(op, i) WHERE a.op = ANY (v_upper) ORDER BY a.i);
END
$$;

COMMENT ON FUNCTION audit._guard_ops(text[]) IS
    'Internal. The operations of a guard checked (INSERT, UPDATE, DELETE, TRUNCATE; any case), without duplicates, in that order.';


CREATE OR REPLACE FUNCTION audit._guard_roles(p_roles text[]) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
-- The excepted roles of a guard: exact names (pg_roles.rolname) of existing roles, sorted,
-- without duplicates.
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY coalesce(p_roles, '{}') LOOP
        IF v_role IS NULL OR v_role = '' THEN
            RAISE EXCEPTION 'an excepted role needs a name' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles AS r WHERE r.rolname = v_role) THEN
            RAISE EXCEPTION 'role % does not exist', pg_catalog.quote_literal(v_role)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Excepted roles are exact role names (as in pg_roles.rolname, case-sensitive), not quoted identifiers.';
        END IF;
    END LOOP;
    RETURN ARRAY(SELECT DISTINCT r FROM pg_catalog.unnest(coalesce(p_roles, '{}')) AS r ORDER BY r);
END
$$;

COMMENT ON FUNCTION audit._guard_roles(text[]) IS
    'Internal. The excepted roles of a guard checked (exact names of existing roles), sorted, without duplicates.';


CREATE OR REPLACE FUNCTION audit._guard_counter(p_relid oid) RETURNS regclass
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.to_regclass(pg_catalog.format('audit.guard_blocked_%s', p_relid))
$$;

COMMENT ON FUNCTION audit._guard_counter(oid) IS
    'Internal. The sequence counting the statements the guard of a table refused (null when missing).';


CREATE OR REPLACE FUNCTION audit._create_guard_member_triggers(p_member regclass, p_relid oid, p_max_rows bigint, p_ops text[])
RETURNS void
LANGUAGE plpgsql AS $$
-- The triggers of a guard, ENABLE ALWAYS, on one table or partition. Those intact are kept;
-- any other under their names (another limit, a table attached with triggers of its own), any
-- left for an operation no longer guarded, and the guard function under another name, are
-- dropped first, then the missing ones created (the event trigger fired by each CREATE TRIGGER
-- must not see one of them half done).
DECLARE
    s record;
    v_enable text;
BEGIN
    FOR s IN SELECT t.tgname::text AS name FROM pg_catalog.pg_trigger AS t
              WHERE t.tgrelid = p_member AND t.tgfoid = 'audit._guard_fire()'::pg_catalog.regprocedure
                AND NOT t.tgname::text IN (SELECT x.name FROM audit._guard_trigger_spec() AS x)
             UNION ALL
             SELECT p.trigger_name FROM audit._guard_member_problems(p_member, p_relid, p_max_rows, p_ops) AS p
              WHERE p.problem NOT IN ('missing', 'not ENABLE ALWAYS') LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', s.name, p_member);
    END LOOP;
    FOR s IN SELECT x.name, x.definition FROM audit._guard_trigger_spec() AS x WHERE x.op = ANY (p_ops) LOOP
        -- Read again for each: the event trigger fired by the previous one may have made it.
        CONTINUE WHEN EXISTS (SELECT FROM pg_catalog.pg_trigger AS t WHERE t.tgrelid = p_member AND t.tgname = s.name);
        EXECUTE pg_catalog.format('CREATE TRIGGER %I ', s.name)
             || pg_catalog.format(s.definition, p_member, p_relid::text, p_max_rows::text);
    END LOOP;
    SELECT pg_catalog.string_agg(pg_catalog.format('ENABLE ALWAYS TRIGGER %I', t.tgname), ', ')
      INTO v_enable
      FROM pg_catalog.pg_trigger AS t
     WHERE t.tgrelid = p_member AND t.tgfoid = 'audit._guard_fire()'::pg_catalog.regprocedure AND t.tgenabled <> 'A';
    IF v_enable IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s ', p_member) || v_enable;
    END IF;
END
$$;

COMMENT ON FUNCTION audit._create_guard_member_triggers(regclass, oid, bigint, text[]) IS
    'Internal. Creates the triggers of a guard, ENABLE ALWAYS, on one table or partition, replacing any under their names that is not as audit.guard() creates it.';

REVOKE ALL ON FUNCTION audit._create_guard_member_triggers(regclass, oid, bigint, text[]) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._drop_guard_member_triggers(p_member regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT t.tgname FROM pg_catalog.pg_trigger AS t
              WHERE t.tgrelid = p_member AND t.tgfoid = 'audit._guard_fire()'::pg_catalog.regprocedure LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', r.tgname, p_member);
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._drop_guard_member_triggers(regclass) IS
    'Internal. Drops the guard triggers of one table (a partition detached from a guarded table).';

REVOKE ALL ON FUNCTION audit._drop_guard_member_triggers(regclass) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit.guard(
    p_table regclass,
    p_max_rows bigint,
    p_ops text[] DEFAULT ARRAY['UPDATE', 'DELETE'],
    p_except_roles text[] DEFAULT '{}'
) RETURNS audit.guard
LANGUAGE plpgsql AS $$
DECLARE
    v_ops text[];
    v_roles text[];
    v_counter text := pg_catalog.format('guard_blocked_%s', p_table::oid);
    v_row audit.guard;
    m regclass;
    r record;
BEGIN
    PERFORM audit._guard_require_owner();
    PERFORM audit._check_guardable(p_table);
    IF p_max_rows IS NULL OR p_max_rows < 1 THEN
        RAISE EXCEPTION 'the limit must be at least 1 row per statement, not %', coalesce(p_max_rows::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'To stop guarding the table, remove its guard: audit.guard_remove(table).';
    END IF;
    v_ops := audit._guard_ops(p_ops);
    v_roles := audit._guard_roles(p_except_roles);
    IF EXISTS (SELECT FROM audit._members(p_table) AS m(member), audit.guard AS g
                WHERE g.relid = m.member AND m.member <> p_table) THEN
        RAISE EXCEPTION 'a partition of % has a guard of its own', p_table
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Remove the partition''s guard first (audit.guard_remove): one guard covers every partition.';
    END IF;

    INSERT INTO audit.guard AS g (relid, schema_name, table_name, max_rows, ops, except_roles)
    SELECT p_table, n.nspname, c.relname, p_max_rows, v_ops, v_roles
      FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = p_table
    ON CONFLICT (relid) DO UPDATE SET
        schema_name = excluded.schema_name,
        table_name = excluded.table_name,
        max_rows = excluded.max_rows,
        ops = excluded.ops,
        except_roles = excluded.except_roles,
        changed_at = pg_catalog.clock_timestamp(),
        changed_by = session_user
    RETURNING * INTO v_row;

    -- The counter of refusals: kept when the guard is set again, owned by the audit owner.
    IF audit._guard_counter(p_table) IS NULL THEN
        EXECUTE pg_catalog.format('CREATE SEQUENCE audit.%I', v_counter);
        EXECUTE pg_catalog.format('COMMENT ON SEQUENCE audit.%I IS %L', v_counter, pg_catalog.format(
            'Statements refused by the guard of the table with OID %s (audit.guard): not undone by their rollback. Read by audit.guard_list().', p_table::oid));
        EXECUTE pg_catalog.format('REVOKE ALL ON SEQUENCE audit.%I FROM PUBLIC', v_counter);
        IF (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = audit._guard_counter(p_table)) <> audit._owner()::oid THEN
            EXECUTE pg_catalog.format('ALTER SEQUENCE audit.%I OWNER TO %s', v_counter, audit._owner());
        END IF;
        IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgaudit_reader') THEN
            EXECUTE pg_catalog.format('GRANT SELECT ON SEQUENCE audit.%I TO pgaudit_reader', v_counter);
        END IF;
    END IF;

    FOR m IN SELECT audit._members(p_table) LOOP
        PERFORM audit._create_guard_member_triggers(m, p_table::oid, p_max_rows, v_ops);
    END LOOP;
    -- Triggers of this guard left on tables that are no longer its partitions (detached while
    -- the event triggers were missing).
    FOR r IN SELECT t.tgname, t.tgrelid::regclass AS rel FROM pg_catalog.pg_trigger AS t
              WHERE t.tgfoid = 'audit._guard_fire()'::pg_catalog.regprocedure
                AND audit._guard_arg_relid(t.tgargs) = p_table::oid
                AND t.tgrelid NOT IN (SELECT audit._members(p_table)) LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', r.tgname, r.rel);
    END LOOP;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION audit.guard(regclass, bigint, text[], text[]) IS
    'Sets (or changes) the guard of a table: any single statement that inserts, updates or deletes more than p_max_rows rows of it (or of any of its partitions), for the operations in p_ops (INSERT, UPDATE, DELETE, TRUNCATE; default UPDATE and DELETE; a guarded TRUNCATE is refused whole), fails with SQLSTATE PGA01 and changes nothing, unless the login role is a member of one of p_except_roles (exact role names). Refusals are counted (audit.guard_list()) and logged (server log, ''pgaudit_tool guard:''). Only the audit owner may call it.';


CREATE OR REPLACE FUNCTION audit.guard_remove(p_table regclass) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    PERFORM audit._guard_require_owner();
    IF p_table IS NULL THEN
        RAISE EXCEPTION 'a table is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM 1 FROM audit.guard WHERE relid = p_table;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    FOR r IN SELECT t.tgname, t.tgrelid::regclass AS rel FROM pg_catalog.pg_trigger AS t
              WHERE t.tgfoid = 'audit._guard_fire()'::pg_catalog.regprocedure
                AND (audit._guard_arg_relid(t.tgargs) = p_table::oid
                     OR t.tgrelid IN (SELECT audit._members(p_table))) LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', r.tgname, r.rel);
    END LOOP;
    DELETE FROM audit.guard WHERE relid = p_table;
    EXECUTE pg_catalog.format('DROP SEQUENCE IF EXISTS audit.%I', pg_catalog.format('guard_blocked_%s', p_table::oid));
    RETURN true;
END
$$;

COMMENT ON FUNCTION audit.guard_remove(regclass) IS
    'Removes the guard of a table: its triggers, its registry row and its counter of refusals (the server log keeps the refusals). Returns false when the table had no guard. Idempotent. Only the audit owner may call it.';


CREATE OR REPLACE FUNCTION audit.guard_list()
RETURNS TABLE (
    table_name text, relid oid, ops text[], max_rows bigint, except_roles text[], blocked bigint,
    state text, created_at timestamptz, created_by text, changed_at timestamptz, changed_by text
)
LANGUAGE sql STABLE SET jit = off AS $$
    WITH g AS (
        SELECT x.*, (c.oid IS NOT NULL) AS present, audit._guard_counter(x.relid) AS counter,
               CASE WHEN c.oid IS NULL THEN pg_catalog.format('%I.%I', x.schema_name, x.table_name)
                    ELSE pg_catalog.format('%I.%I', n.nspname, c.relname) END AS qualified
          FROM audit.guard AS x
          LEFT JOIN pg_catalog.pg_class AS c ON c.oid = x.relid
          LEFT JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    ), p AS (
        SELECT g.relid,
               pg_catalog.bool_or(q.problem = 'missing') AS missing,
               pg_catalog.bool_or(q.problem NOT IN ('missing', 'not ENABLE ALWAYS')) AS altered,
               pg_catalog.bool_or(q.problem = 'not ENABLE ALWAYS') AS not_always
          FROM g, LATERAL audit._guard_problems(g.relid) AS q
         WHERE g.present
         GROUP BY g.relid
    )
    SELECT g.qualified, g.relid, g.ops, g.max_rows, g.except_roles,
           CASE WHEN g.counter IS NOT NULL AND pg_catalog.has_sequence_privilege(g.counter, 'SELECT')
                THEN coalesce(pg_catalog.pg_sequence_last_value(g.counter), 0) END,
           CASE WHEN NOT g.present THEN 'table dropped'
                WHEN p.altered THEN 'triggers altered'
                WHEN p.missing THEN 'triggers missing'
                WHEN p.not_always THEN 'triggers not ENABLE ALWAYS'
                ELSE 'ok' END,
           g.created_at, g.created_by, g.changed_at, g.changed_by
      FROM g LEFT JOIN p ON p.relid = g.relid
     ORDER BY g.qualified
$$;

COMMENT ON FUNCTION audit.guard_list() IS
    'Every guard: the table, guarded operations, limit, excepted roles, blocked (statements refused since the guard was set; survives their rollback; null when the counter is missing or not readable), state of its triggers (ok; triggers altered; triggers missing; triggers not ENABLE ALWAYS; table dropped) and when and by whom it was set.';


CREATE OR REPLACE FUNCTION audit._guard_after_ddl(p_tables oid[], p_parents oid[], p_created oid[]) RETURNS void
LANGUAGE plpgsql AS $$
-- Called by the event trigger audit._guard_ddl (as the audit owner) at the end of ALTER TABLE,
-- CREATE TABLE, CREATE/ALTER TRIGGER: p_tables the relations the command created or altered (or
-- whose triggers), p_parents those after which partitions attached or detached are looked for,
-- p_created those with a trigger created or replaced. For everyone: new partitions of a guarded
-- table get its triggers, partitions detached lose them. Unless the audit owner ran the command:
-- refuse a partition that brings triggers of its own under the guard triggers' names, detaching a
-- partition of a table whose guard covers DELETE or TRUNCATE, and any guard trigger left other
-- than as audit.guard() created it (another function, events, condition, arguments, renamed,
-- not ENABLE ALWAYS).
DECLARE
    v_owner boolean := audit._is_owner();
    r record;
BEGIN
    -- A table guarded on its own cannot become a partition of a guarded table (one set of
    -- trigger names, one guard).
    FOR r IN SELECT g.relid, a.relid AS ancestor
               FROM audit.guard AS g, pg_catalog.pg_partition_ancestors(g.relid) AS a
              WHERE a.relid <> g.relid AND a.relid IN (SELECT x.relid FROM audit.guard AS x)
                AND g.relid IN (SELECT m FROM pg_catalog.unnest(p_tables) AS m UNION
                                SELECT k.relid FROM pg_catalog.unnest(p_parents) AS p(objid), pg_catalog.pg_partition_tree(p.objid) AS k)
              LIMIT 1 LOOP
        RAISE EXCEPTION 'table % has a guard of its own and cannot become a partition of guarded table %', r.relid::regclass, r.ancestor::regclass
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The owner of the audit schema must remove one of the two guards first (pgaudit-tool guard --remove).';
    END LOOP;

    -- New partitions (CREATE TABLE ... PARTITION OF, ATTACH PARTITION): the guard's triggers.
    FOR r IN SELECT m.member, g.relid, g.max_rows, g.ops,
                    pg_catalog.bool_or(p.problem NOT IN ('missing', 'not ENABLE ALWAYS')) AS altered
               FROM audit.guard AS g, audit._members(g.relid::regclass) AS m(member),
                    audit._guard_member_problems(m.member, g.relid, g.max_rows, g.ops) AS p
              WHERE g.relid IN (SELECT a.relid FROM pg_catalog.unnest(p_parents) AS x(objid),
                                       pg_catalog.pg_partition_ancestors(x.objid) AS a)
              GROUP BY m.member, g.relid, g.max_rows, g.ops
             HAVING pg_catalog.bool_or(p.problem IS NOT NULL AND p.problem <> 'not ENABLE ALWAYS') LOOP
        IF r.altered AND NOT v_owner THEN
            RAISE EXCEPTION 'partition % of guarded table % has triggers of its own under the names of the guard triggers', r.member, r.relid::regclass
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Drop them before attaching it: the guard installs its own.';
        END IF;
        PERFORM audit._create_guard_member_triggers(r.member, r.relid, r.max_rows, r.ops);
    END LOOP;

    -- Partitions detached from a guarded table: their rows leave it without a DELETE the guard
    -- could count, so non-owners may not when DELETE or TRUNCATE is guarded; the triggers go.
    FOR r IN SELECT DISTINCT t.tgrelid::regclass AS member, g.relid, g.ops
               FROM audit.guard AS g
               JOIN pg_catalog.pg_trigger AS t
                 ON t.tgfoid = 'audit._guard_fire()'::pg_catalog.regprocedure AND audit._guard_arg_relid(t.tgargs) = g.relid
              WHERE g.relid IN (SELECT a.relid FROM pg_catalog.unnest(p_parents) AS x(objid),
                                       pg_catalog.pg_partition_ancestors(x.objid) AS a)
                AND t.tgrelid NOT IN (SELECT audit._members(g.relid::regclass)) LOOP
        IF NOT v_owner AND r.ops && '{DELETE,TRUNCATE}'::text[] THEN
            RAISE EXCEPTION 'partition % cannot be detached from guarded table %: its rows would leave the table without a statement the guard limits', r.member, r.relid::regclass
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Only the owner of the audit schema can detach it, or remove or change the guard (pgaudit-tool guard).';
        END IF;
        PERFORM audit._drop_guard_member_triggers(r.member);
    END LOOP;

    IF v_owner THEN
        RETURN;
    END IF;
    -- Every member of every guarded table the command touched.
    FOR r IN SELECT p.member, p.trigger_name, p.problem, (p.member::oid = ANY (coalesce(p_created, '{}'))) AS created
               FROM (SELECT DISTINCT audit._guarded_of(t.objid) AS relid FROM pg_catalog.unnest(p_tables) AS t(objid)) AS a,
                    LATERAL audit._guard_problems(a.relid) AS p
              WHERE a.relid IS NOT NULL AND p.problem IS NOT NULL AND p.problem <> 'missing' LOOP
        IF r.problem = 'not ENABLE ALWAYS' AND r.created THEN
            -- Created as it should be (by the event trigger, for a new partition), but CREATE
            -- TRIGGER cannot say ALWAYS.
            EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', r.member, r.trigger_name);
            CONTINUE;
        END IF;
        RAISE EXCEPTION 'guard trigger % of % cannot be changed: it would %', r.trigger_name, r.member,
                CASE r.problem WHEN 'not ENABLE ALWAYS' THEN 'no longer be ENABLE ALWAYS'
                               WHEN 'runs the guard function under another name' THEN 'be renamed'
                               ELSE r.problem END
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Only the owner of the audit schema can change or remove a guard (pgaudit-tool guard).';
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._guard_after_ddl(oid[], oid[], oid[]) IS
    'Internal. Called by the event trigger audit._guard_ddl: gives new partitions of guarded tables their guard triggers and takes them from detached ones; refuses, for anyone but the audit owner, DDL that leaves a guard trigger other than as audit.guard() created it, and detaching a partition of a table whose guard covers DELETE or TRUNCATE.';

REVOKE ALL ON FUNCTION audit._guard_after_ddl(oid[], oid[], oid[]) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._guard_after_drop() RETURNS void
LANGUAGE plpgsql AS $$
-- Called by the event trigger audit._guard_drop (as the audit owner) after a drop. A guarded
-- table dropped by the audit owner takes its guard and counter with it; anyone else may drop
-- neither a guarded table (or one of its partitions) nor a guard trigger of one.
DECLARE
    v_owner boolean := audit._is_owner();
    o record;
    v_table regclass;
BEGIN
    FOR o IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects() LOOP
        IF o.object_type = 'table' AND EXISTS (SELECT FROM audit.guard AS g WHERE g.relid = o.objid) THEN
            IF NOT v_owner THEN
                RAISE EXCEPTION 'table % is guarded and cannot be dropped', o.object_identity
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'The owner of the audit schema must remove its guard first (pgaudit-tool guard --remove).';
            END IF;
            DELETE FROM audit.guard WHERE relid = o.objid;
            EXECUTE pg_catalog.format('DROP SEQUENCE IF EXISTS audit.%I', pg_catalog.format('guard_blocked_%s', o.objid));
        ELSIF o.object_type = 'trigger' AND NOT v_owner
              AND o.address_names[3] IN (SELECT s.name FROM audit._guard_trigger_spec() AS s) THEN
            -- A partition dropped with its table is gone already: refused like a guarded one.
            v_table := pg_catalog.to_regclass(pg_catalog.format('%I.%I', o.address_names[1], o.address_names[2]));
            IF v_table IS NULL
               OR EXISTS (SELECT FROM audit.guard AS g, audit._guard_trigger_spec() AS s
                           WHERE g.relid = audit._guarded_of(v_table) AND s.name = o.address_names[3] AND s.op = ANY (g.ops)) THEN
                RAISE EXCEPTION 'guard trigger % cannot be dropped', o.object_identity
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'Only the owner of the audit schema can remove a guard (pgaudit-tool guard --remove).';
            END IF;
        END IF;
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._guard_after_drop() IS
    'Internal. Called by the event trigger audit._guard_drop: removes the guard of a guarded table the audit owner dropped; refuses, for anyone else, dropping a guarded table, a partition of one, or a guard trigger.';

REVOKE ALL ON FUNCTION audit._guard_after_drop() FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._guard_doctor()
RETURNS TABLE (severity text, object text, problem text, fix text)
LANGUAGE plpgsql STABLE AS $$
-- The guard checks of audit.doctor(); one row per problem, with the SQL that fixes it safely.
DECLARE
    t record;
BEGIN
    FOR t IN SELECT g.*, c.oid IS NOT NULL AS present,
                    CASE WHEN c.oid IS NULL THEN pg_catalog.format('%I.%I', g.schema_name, g.table_name)
                         ELSE pg_catalog.format('%I.%I', n.nspname, c.relname) END AS qualified
               FROM audit.guard AS g
               LEFT JOIN pg_catalog.pg_class AS c ON c.oid = g.relid
               LEFT JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
              ORDER BY g.schema_name, g.table_name LOOP
        IF NOT t.present THEN
            severity := 'warning'; object := t.qualified;
            problem := 'guarded table was dropped; its guard is still registered';
            fix := pg_catalog.format('SELECT audit.guard_remove(%s::oid::regclass)', t.relid);
            RETURN NEXT;
            CONTINUE;
        END IF;
        FOR problem IN SELECT pg_catalog.format('guard trigger %s on %s: %s: %s', p.trigger_name, p.member, p.problem,
                                                CASE WHEN p.problem LIKE 'left over%' THEN 'it refuses statements the guard does not cover'
                                                     ELSE 'statements over the limit may not be stopped' END)
                         FROM audit._guard_problems(t.relid) AS p WHERE p.problem IS NOT NULL LOOP
            severity := 'error'; object := t.qualified;
            fix := pg_catalog.format('SELECT audit.guard(%L, %s, %L, %L)', t.qualified, t.max_rows, t.ops, t.except_roles);
            RETURN NEXT;
        END LOOP;
        IF audit._guard_counter(t.relid) IS NULL THEN
            severity := 'warning'; object := t.qualified;
            problem := 'the counter of refused statements is missing: refusals are still made and logged, not counted';
            fix := pg_catalog.format('SELECT audit.guard(%L, %s, %L, %L)', t.qualified, t.max_rows, t.ops, t.except_roles);
            RETURN NEXT;
        END IF;
        FOR problem IN SELECT pg_catalog.format('excepted role %s does not exist (dropped or renamed): its members are limited like everyone else',
                                                pg_catalog.quote_ident(e))
                         FROM pg_catalog.unnest(t.except_roles) AS e
                        WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles AS r WHERE r.rolname = e) LOOP
            severity := 'warning'; object := t.qualified; fix := NULL;
            RETURN NEXT;
        END LOOP;
        FOR problem IN SELECT pg_catalog.format('guarded on its own but now a partition of %s: statements on %s are not limited by this guard',
                                                a.relid::regclass, a.relid::regclass)
                         FROM pg_catalog.pg_partition_ancestors(t.relid) AS a
                        WHERE a.relid <> t.relid
                          AND NOT EXISTS (SELECT FROM pg_catalog.pg_inherits AS i WHERE i.inhrelid = a.relid) LOOP
            severity := 'warning'; object := t.qualified; fix := NULL;
            RETURN NEXT;
        END LOOP;
    END LOOP;
    -- Guard triggers on a table no guard covers (a partition detached without the event
    -- triggers, a guard deleted from the registry): they refuse statements nobody asked to limit.
    FOR t IN SELECT tg.tgrelid::regclass AS rel, tg.tgname
               FROM pg_catalog.pg_trigger AS tg
              WHERE tg.tgfoid = 'audit._guard_fire()'::pg_catalog.regprocedure
                AND NOT EXISTS (SELECT FROM audit.guard AS g
                                 WHERE g.relid = audit._guard_arg_relid(tg.tgargs)
                                   AND tg.tgrelid IN (SELECT audit._members(g.relid::regclass)))
              ORDER BY 1, 2 LOOP
        severity := 'warning'; object := t.rel::text;
        problem := pg_catalog.format('guard trigger %s is left on a table no guard covers (a partition detached, or a guard deleted from audit.guard): it refuses statements nobody asked to limit', t.tgname);
        fix := pg_catalog.format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
        RETURN NEXT;
    END LOOP;
    -- Counters of guards that are gone.
    FOR t IN SELECT c.relname FROM pg_catalog.pg_class AS c
              WHERE c.relnamespace = 'audit'::regnamespace AND c.relkind = 'S' AND c.relname ~ '^guard_blocked_[0-9]+$'
                AND NOT EXISTS (SELECT FROM audit.guard AS g WHERE pg_catalog.format('guard_blocked_%s', g.relid) = c.relname)
              ORDER BY 1 LOOP
        severity := 'info'; object := pg_catalog.format('audit.%I', t.relname);
        problem := 'counter of refused statements of a guard that no longer exists';
        fix := pg_catalog.format('DROP SEQUENCE audit.%I', t.relname);
        RETURN NEXT;
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._guard_doctor() IS
    'Internal. The guard checks of audit.doctor(): guard triggers missing, disabled or altered (fix: set the guard again), guarded tables dropped, counters missing or left over, excepted roles gone, guard triggers left on tables no guard covers.';


-- Readers see the counters of refusals (audit.guard_list()); audit.guard() grants it to each new one.
DO $$
DECLARE
    s regclass;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgaudit_reader') THEN
        FOR s IN SELECT c.oid FROM pg_catalog.pg_class AS c
                  WHERE c.relnamespace = 'audit'::regnamespace AND c.relkind = 'S' AND c.relname ~ '^guard_blocked_[0-9]+$' LOOP
            EXECUTE pg_catalog.format('GRANT SELECT ON SEQUENCE %s TO pgaudit_reader', s);
        END LOOP;
    END IF;
END
$$;
