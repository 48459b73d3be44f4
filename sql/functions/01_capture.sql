-- pgaudit_tool: capture.
--
-- Each audited table (and each of its partitions) gets four statement-level triggers, all
-- ENABLE ALWAYS (so that session_replication_role = replica cannot skip them):
--   pgaudit_truncate  BEFORE TRUNCATE -> audit.capture_<oid>() (owner rights)
--   pgaudit_insert    AFTER INSERT, transition table new_rows
--   pgaudit_update    AFTER UPDATE, transition tables old_rows and new_rows
--   pgaudit_delete    AFTER DELETE, transition table old_rows
--
-- The capture function is generated per table (audit._capture_function_sql): key columns and
-- excluded columns are baked in, so a statement costs one INSERT ... SELECT over its transition
-- tables, plus the transaction record at the transaction's first audited change. It runs as the
-- owner of the audit schema (SECURITY DEFINER, pinned search_path and output settings). The
-- acting role it records is the session's role: the role set by SET ROLE, else the login role
-- (session_user); statements cannot forge it.

CREATE OR REPLACE FUNCTION audit._key_sql(p_alias text, p_keys text[]) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT pg_catalog.concat('pg_catalog.jsonb_build_object(',
        pg_catalog.string_agg(pg_catalog.format('%L, %s.%I', k, p_alias, k), ', ' ORDER BY o),
        ')')
    FROM unnest(p_keys) WITH ORDINALITY AS u(k, o)
$$;

COMMENT ON FUNCTION audit._key_sql(text, text[]) IS
    'Internal. SQL expression building the JSON key object of the row alias p_alias.';


CREATE OR REPLACE FUNCTION audit._image_sql(p_alias text, p_excluded text[]) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    -- "alias.*", not "alias": a column named like the alias would be taken for the whole row.
    SELECT CASE WHEN pg_catalog.cardinality(p_excluded) = 0
                THEN pg_catalog.format('pg_catalog.to_jsonb(%s.*)', p_alias)
                ELSE pg_catalog.format('(pg_catalog.to_jsonb(%s.*) OPERATOR(pg_catalog.-) %L::text[])',
                                       p_alias, p_excluded)
           END
$$;

COMMENT ON FUNCTION audit._image_sql(text, text[]) IS
    'Internal. SQL expression giving the JSONB image of the row alias p_alias without the excluded columns.';


CREATE OR REPLACE FUNCTION audit._capture_sql(
    p_op text, p_relid oid, p_keys text[], p_excluded text[], p_dynamic boolean,
    p_source regclass DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql STABLE AS $$
-- The INSERT ... SELECT that logs one statement's rows. Values known once per statement are
-- plpgsql variables (v_txid, v_role, v_schema, v_table, v_clock) in the generated function, or
-- parameters $1..$5 when p_dynamic (EXECUTE ... USING, after a column rename or for TRUNCATE).
DECLARE
    v_vals text;
    v_head text := 'INSERT INTO audit.change (txid, relid, schema_name, table_name, op, role, '
                   'statement_at, clock_at, pk, old, new) ';
    v_join text;
BEGIN
    v_vals := CASE WHEN p_dynamic
        THEN pg_catalog.format('$1, %s::oid, $3, $4, %%L, $2, pg_catalog.statement_timestamp(), $5', p_relid)
        ELSE pg_catalog.format('v_txid, %s::oid, v_schema, v_table, %%L, v_role, pg_catalog.statement_timestamp(), v_clock', p_relid)
    END;
    IF p_op = 'INSERT' THEN
        RETURN v_head || pg_catalog.format('SELECT ' || v_vals || ', %s, NULL, %s FROM new_rows AS n',
            'I', audit._key_sql('n', p_keys), audit._image_sql('n', p_excluded));
    ELSIF p_op = 'DELETE' THEN
        RETURN v_head || pg_catalog.format('SELECT ' || v_vals || ', %s, %s, NULL FROM old_rows AS o',
            'D', audit._key_sql('o', p_keys), audit._image_sql('o', p_excluded));
    ELSIF p_op = 'TRUNCATE' THEN
        RETURN v_head || pg_catalog.format('SELECT ' || v_vals || ', %s, %s, NULL FROM ONLY %s AS o',
            'T', audit._key_sql('o', p_keys), audit._image_sql('o', p_excluded), p_source);
    ELSIF p_op = 'UPDATE' THEN
        -- Old and new rows are paired by key. A row whose key changed has no partner: it is
        -- logged under its old key with new = NULL and under its new key with old = NULL.
        SELECT pg_catalog.string_agg(pg_catalog.format('o.%1$I OPERATOR(pg_catalog.=) n.%1$I', k), ' AND ')
          INTO v_join FROM unnest(p_keys) AS k;
        RETURN v_head || pg_catalog.format(
            'SELECT ' || v_vals || ', CASE WHEN n.%I IS NULL THEN %s ELSE %s END, %s, %s '
            'FROM old_rows AS o FULL JOIN new_rows AS n ON %s',
            'U', p_keys[1], audit._key_sql('o', p_keys), audit._key_sql('n', p_keys),
            audit._image_sql('o', p_excluded), audit._image_sql('n', p_excluded), v_join);
    END IF;
    RAISE EXCEPTION 'unknown operation %', p_op USING ERRCODE = 'invalid_parameter_value';
END
$$;

COMMENT ON FUNCTION audit._capture_sql(text, oid, text[], text[], boolean, regclass) IS
    'Internal. Text of the INSERT ... SELECT that logs the rows of one statement (INSERT, UPDATE, DELETE or TRUNCATE).';


CREATE OR REPLACE FUNCTION audit._current_columns(p_relid oid, p_attnums int2[]) RETURNS text[]
LANGUAGE sql STABLE STRICT AS $$
    SELECT coalesce(pg_catalog.array_agg(a.attname::text ORDER BY u.ord), '{}')
    FROM unnest(p_attnums) WITH ORDINALITY AS u(attnum, ord)
    LEFT JOIN pg_catalog.pg_attribute AS a
      ON a.attrelid = p_relid AND a.attnum = u.attnum AND NOT a.attisdropped
$$;

COMMENT ON FUNCTION audit._current_columns(oid, int2[]) IS
    'Internal. Current names of the given columns of a table, in the given order; NULL in place of a dropped column.';


CREATE OR REPLACE FUNCTION audit._context(p_raw text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
-- The application context of a transaction: the text of the setting pgaudit.context, which must
-- be a JSON object. (Capture functions write the transaction record themselves: a call to a
-- SECURITY DEFINER writer cost about 20 µs a transaction more.)
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


CREATE OR REPLACE FUNCTION audit._columns_now(p_relid oid, OUT attnums int2[], OUT columns text[])
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.array_agg(a.attnum ORDER BY a.attnum), pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
      FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped
$$;

COMMENT ON FUNCTION audit._columns_now(oid) IS
    'Internal. The attribute numbers and names of a table''s columns now, in order. (Generated capture functions that check the layout inline the same query.)';


CREATE OR REPLACE FUNCTION audit._capture_function_sql(p_relid oid, p_layout_check boolean) RETURNS text
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
    IF pg_catalog.array_position(audit._current_columns(p_relid, t.key_attnums), NULL) IS NOT NULL THEN
        -- A key column was dropped: every write must fail, with a sentence saying why.
        v_check := pg_catalog.format($chk$
    RAISE EXCEPTION 'audited table %% lost a key column; capture cannot identify rows', %1$s::oid::regclass
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'Restore the key, or run audit.disable() on the table.';$chk$, p_relid);
    ELSIF p_layout_check THEN
        SELECT c.attnums, c.columns INTO v_attnums, v_columns FROM audit._columns_now(p_relid) AS c;
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
    -- The session's role: SET ROLE's, else the login role. Not current_user, which is the audit
    -- owner here (SECURITY DEFINER); nothing the statement does can change either.
    v_role text := coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user::text);
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


CREATE OR REPLACE FUNCTION audit._record_layout(p_relid oid, p_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
-- Records the table's current column layout as valid from p_at, unless it is the latest known.
DECLARE
    v_attnums int2[];
    v_columns text[];
    l audit.table_layout;
BEGIN
    SELECT c.attnums, c.columns INTO v_attnums, v_columns FROM audit._columns_now(p_relid) AS c;
    SELECT * INTO l FROM audit.table_layout WHERE relid = p_relid ORDER BY valid_from DESC LIMIT 1;
    IF l.attnums IS NOT DISTINCT FROM v_attnums AND l.columns IS NOT DISTINCT FROM v_columns THEN
        RETURN;
    END IF;
    INSERT INTO audit.table_layout (relid, valid_from, attnums, columns)
    VALUES (p_relid, p_at, v_attnums, v_columns)
    ON CONFLICT (relid, valid_from) DO UPDATE SET attnums = excluded.attnums, columns = excluded.columns;
END
$$;

COMMENT ON FUNCTION audit._record_layout(oid, timestamptz) IS
    'Internal. Records the current column layout of a table in audit.table_layout when it differs from the latest recorded one.';

REVOKE ALL ON FUNCTION audit._record_layout(oid, timestamptz) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._mark_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
-- Deferred to COMMIT: stamps the transaction with the clock time of its commit.
BEGIN
    UPDATE audit.transaction SET committed_at = pg_catalog.clock_timestamp() WHERE txid = NEW.txid;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION audit._mark_commit() IS
    'Internal. Deferred constraint trigger on audit.transaction: writes committed_at as late as possible in the transaction, at COMMIT.';

REVOKE ALL ON FUNCTION audit._mark_commit() FROM PUBLIC;
