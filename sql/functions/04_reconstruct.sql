-- pgaudit_tool: history queries and point-in-time reconstruction.
--
-- "The state at T" is the state every transaction committed at or before T produced
-- (audit.transaction.committed_at <= T). The past is rebuilt from the live table by undoing,
-- key by key, the changes committed after T: for every key changed since T, the row at T is the
-- "old" image of its first change after T (none: it did not exist); every other row is as it is
-- now. This needs capture to have been on without interruption from T until now, and rebuilds
-- rows that existed before auditing started too.
--
-- Old images are keyed by the column names of their time; audit.table_layout maps them to the
-- names of today (a column dropped since keeps its last name). In a rebuilt table
-- (table_at), columns added after T and excluded columns are NULL, and columns dropped since T
-- are absent; JSON results (row_at, diff, blame) keep dropped columns under their last name.
--
--   audit.pk(table, key)                      a key, typed and normalised, from JSON or a bare value
--   audit.row_at(table, key, at)              one row at T, as JSONB (null: did not exist)
--   audit.table_at(NULL::table, at)           the whole table at T, typed, usable in FROM
--   audit.diff(table, from, to)               net change per row between two instants
--   audit.blame(table, key)                   who last set each column of a row, and when
--   audit.history_columns (view)              one row per column changed, for people


CREATE OR REPLACE FUNCTION audit._qualified(p_table regclass) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
      FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = p_table
$$;

COMMENT ON FUNCTION audit._qualified(regclass) IS
    'Internal. The schema-qualified name of a table whatever the search_path, for messages.';


CREATE OR REPLACE FUNCTION audit._tracked(p_table regclass) RETURNS audit.tracked_table
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t audit.tracked_table;
BEGIN
    SELECT * INTO t FROM audit.tracked_table WHERE relid = p_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not audited, so it has no history', audit._qualified(p_table)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = pg_catalog.format('Run audit.enable(%L) to start capturing it.', p_table::text);
    END IF;
    RETURN t;
END
$$;

COMMENT ON FUNCTION audit._tracked(regclass) IS
    'Internal. The registry row of an audited table; raises a clear error for a table that never was.';


CREATE OR REPLACE FUNCTION audit._check_unbroken(p_table regclass, p_at timestamptz) RETURNS void
LANGUAGE plpgsql STABLE AS $$
-- Raises when the history of p_table was broken after p_at (audit.history_break: committed after
-- it), or its key is no longer the one capture pairs rows by: the live table then cannot be
-- rolled back to p_at by undoing logged changes.
DECLARE
    b record;
    t audit.tracked_table := audit._tracked(p_table);
    v_attnums int2[];
BEGIN
    SELECT h.at, h.reason INTO b
      FROM audit.history_break AS h LEFT JOIN audit.transaction AS x ON x.txid = h.txid
     WHERE h.relid = p_table AND (x.committed_at > p_at OR x.committed_at IS NULL OR h.at > p_at)
     ORDER BY h.at DESC LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the history of % is broken at %: %; its state at % cannot be rebuilt from the live table', audit._qualified(p_table), audit._time_text(b.at), b.reason, audit._time_text(p_at)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('States from %s on can be rebuilt and reverted to; older changes are still listed by history.', b.at);
    END IF;
    BEGIN
        v_attnums := (audit._key_of(p_table)).attnums;
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        v_attnums := NULL;
    END;
    IF v_attnums IS DISTINCT FROM t.key_attnums THEN
        RAISE EXCEPTION 'the key of % is no longer (%), the key its history pairs rows by', audit._qualified(p_table), pg_catalog.array_to_string(t.key_columns, ', ')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('Run audit.refresh(%L) (pgaudit-tool refresh): it records the change of key as a break in history.', p_table::text);
    END IF;
END
$$;

COMMENT ON FUNCTION audit._check_unbroken(regclass, timestamptz) IS
    'Internal. Raises a clear error when the history of a table was broken after an instant (audit.history_break), or its key changed since capture was generated.';


CREATE OR REPLACE FUNCTION audit._log_sql(p_log text) RETURNS text
LANGUAGE sql STABLE AS $$
-- The relation reconstruction reads the log's changes or transactions from: audit.change or
-- audit.transaction, or, while the session reads with an archive (the transaction-local setting
-- pgaudit.read_archive = on, and the temporary tables pgaudit_tool.archive.attach() filled), a
-- union of the log and the archived rows. Only the session's own reads see its temporary
-- tables, and none of these functions writes.
    SELECT CASE WHEN pg_catalog.current_setting('pgaudit.read_archive', true) = 'on'
                 AND pg_catalog.to_regclass(pg_catalog.format('pg_temp.%I', 'pgaudit_archived_' || p_log)) IS NOT NULL
           THEN pg_catalog.format('(SELECT * FROM audit.%1$I UNION ALL SELECT * FROM pg_temp.%2$I)', p_log, 'pgaudit_archived_' || p_log)
           ELSE pg_catalog.format('audit.%I', p_log) END
$$;

COMMENT ON FUNCTION audit._log_sql(text) IS
    'Internal. SQL naming the rows of audit.change or audit.transaction (p_log) that reconstruction reads: with the archive''s rows added while the session reads with an archive (setting pgaudit.read_archive, temporary tables of pgaudit_tool).';


CREATE OR REPLACE FUNCTION audit._check_retired(p_table regclass, p_at timestamptz) RETURNS void
LANGUAGE plpgsql STABLE AS $$
-- Raises when changes of p_table committed after p_at left the log (archive --drop, retention):
-- the state at p_at cannot be rebuilt from the log alone.
DECLARE
    r audit.retired_partition;
BEGIN
    SELECT * INTO r FROM audit.retired_partition AS x
     WHERE x.committed_max > p_at AND p_table::oid = ANY (x.tables)
       -- read with the archive (pgaudit_tool.archive.attach): only what was not archived
       AND (x.files IS NULL OR audit._log_sql('change') = 'audit.change')
     ORDER BY x.committed_max DESC LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'changes of % committed up to % left the log (partitions dropped %), so its state at % cannot be rebuilt from the log',
                        audit._qualified(p_table), audit._time_text(r.committed_max), audit._time_text(r.retired_at), audit._time_text(p_at)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = CASE WHEN r.files IS NOT NULL
                              THEN pg_catalog.format('They were archived to %s: read them from there (--archive DIR).', r.files ->> 'archive')
                              ELSE 'They were dropped without an archive (retention); no later instant is affected.' END;
    END IF;
END
$$;

COMMENT ON FUNCTION audit._check_retired(regclass, timestamptz) IS
    'Internal. Raises a clear error naming the archive when changes of a table committed after an instant left the log (audit.retired_partition).';


CREATE OR REPLACE FUNCTION audit._check_since(p_table regclass, p_at timestamptz) RETURNS audit.tracked_table
LANGUAGE plpgsql STABLE AS $$
-- Raises unless the state of p_table at p_at can be rebuilt from the live table and the log.
DECLARE
    t audit.tracked_table := audit._tracked(p_table);
    v_marker timestamptz;
BEGIN
    IF p_at IS NULL THEN
        RAISE EXCEPTION 'an instant is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT t.enabled THEN
        RAISE EXCEPTION 'capture of % is off since %, so its past cannot be rebuilt from the live table', audit._qualified(p_table), audit._time_text(t.disabled_at)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Its recorded changes are still listed by history; re-enable capture to rebuild states from then on.';
    END IF;
    IF p_at < t.enabled_at THEN
        RAISE EXCEPTION 'history of % exists from % only; % is earlier', audit._qualified(p_table), audit._time_text(t.enabled_at), audit._time_text(p_at)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = CASE WHEN t.history_since < t.enabled_at
                              THEN pg_catalog.format('Capture was off before %s (first enabled %s).', audit._time_text(t.enabled_at), audit._time_text(t.history_since))
                              ELSE 'Changes made before capture was enabled were not recorded.' END;
    END IF;
    PERFORM audit._check_unbroken(p_table, p_at);
    PERFORM audit._check_retired(p_table, p_at);
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.min(c.clock_at)'
        '  FROM %s AS c JOIN %s AS x ON x.txid = c.txid AND x.started_at = c.started_at'
        ' WHERE c.relid = $1 AND c.op = ''T'' AND c.pk IS NULL AND (x.committed_at > $2 OR x.committed_at IS NULL)',
        audit._log_sql('change'), audit._log_sql('transaction'))
       INTO v_marker USING p_table, p_at;
    IF v_marker IS NOT NULL THEN
        RAISE EXCEPTION 'a TRUNCATE of % at % was recorded without its rows, so the table before it cannot be rebuilt', audit._qualified(p_table), audit._time_text(v_marker)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Enable capture with TRUNCATE content (the default) to make TRUNCATE reversible.';
    END IF;
    RETURN t;
END
$$;

COMMENT ON FUNCTION audit._check_since(regclass, timestamptz) IS
    'Internal. Raises a clear error unless the state of a table at an instant can be rebuilt: audited without interruption since then, and no TRUNCATE recorded without content since then.';


CREATE OR REPLACE FUNCTION audit._renames(p_table regclass)
RETURNS TABLE (valid_from timestamptz, valid_to timestamptz, map jsonb)
LANGUAGE sql STABLE AS $$
    -- For each recorded layout whose column names differ from today's: {old name: name today}.
    -- A column dropped since keeps the last name it had. Images captured in
    -- [valid_from, valid_to) use the map.
    SELECT p.valid_from, p.valid_to, p.map
      FROM (SELECT l.valid_from,
                   pg_catalog.lead(l.valid_from) OVER (ORDER BY l.valid_from) AS valid_to,
                   (SELECT pg_catalog.jsonb_object_agg(u.name, coalesce(a.attname::text, last.name))
                      FROM ROWS FROM (pg_catalog.unnest(l.attnums), pg_catalog.unnest(l.columns)) AS u(attnum, name)
                      LEFT JOIN pg_catalog.pg_attribute AS a
                        ON a.attrelid = p_table AND a.attnum = u.attnum AND NOT a.attisdropped
                      LEFT JOIN LATERAL (
                           SELECT l2.columns[pg_catalog.array_position(l2.attnums, u.attnum)] AS name
                             FROM audit.table_layout AS l2
                            WHERE l2.relid = p_table AND u.attnum = ANY (l2.attnums)
                            ORDER BY l2.valid_from DESC LIMIT 1) AS last ON true
                     WHERE coalesce(a.attname::text, last.name) IS DISTINCT FROM u.name) AS map
              FROM audit.table_layout AS l WHERE l.relid = p_table) AS p
     WHERE p.map IS NOT NULL
$$;

COMMENT ON FUNCTION audit._renames(regclass) IS
    'Internal. Name maps from past column layouts of a table to today''s names (a column dropped since keeps its last name).';


CREATE OR REPLACE FUNCTION audit._rename_keys(p_image jsonb, p_map jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_map IS NULL OR p_image IS NULL THEN p_image
                ELSE coalesce((SELECT pg_catalog.jsonb_object_agg(coalesce(p_map ->> e.key, e.key), e.value)
                                 FROM pg_catalog.jsonb_each(p_image) AS e
                                WHERE NOT (p_map ? e.key AND pg_catalog.jsonb_typeof(p_map -> e.key) = 'null')),
                              '{}'::jsonb)
           END
$$;

COMMENT ON FUNCTION audit._rename_keys(jsonb, jsonb) IS
    'Internal. Renames the keys of a row image by a map {old: new}; keys mapped to null (dropped columns) are removed.';


CREATE OR REPLACE FUNCTION audit._columns_at(p_table regclass, p_at timestamptz) RETURNS int2[]
LANGUAGE sql STABLE AS $$
    -- Attribute numbers of the columns the table had at p_at (its earliest known layout if older).
    SELECT coalesce(
        (SELECT l.attnums FROM audit.table_layout AS l WHERE l.relid = p_table AND l.valid_from <= p_at
          ORDER BY l.valid_from DESC LIMIT 1),
        (SELECT l.attnums FROM audit.table_layout AS l WHERE l.relid = p_table ORDER BY l.valid_from LIMIT 1))
$$;

COMMENT ON FUNCTION audit._columns_at(regclass, timestamptz) IS
    'Internal. The attribute numbers of the columns a table had at an instant, from audit.table_layout.';


CREATE OR REPLACE FUNCTION audit._key_columns(p_table regclass) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT audit._current_columns(p_table, t.key_attnums) FROM audit.tracked_table AS t WHERE t.relid = p_table
$$;

COMMENT ON FUNCTION audit._key_columns(regclass) IS 'Internal. Current names of the key columns of an audited table.';


-- Revision 0008 of the functions: audit.pk takes p_part (a part of a composite key).
DROP FUNCTION IF EXISTS audit.pk(regclass, text);

CREATE OR REPLACE FUNCTION audit.pk(p_table regclass, p_key text, p_part boolean DEFAULT false) RETURNS jsonb
LANGUAGE plpgsql STABLE
    -- Generated SQL compares values of the table's types: only pg_catalog's operators.
    SET search_path = pg_catalog, pg_temp
    -- Keys and images are compared as JSON: the same output settings as capture.
    SET timezone = 'UTC' SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres'
    SET extra_float_digits = 1 SET bytea_output = 'hex' AS $$
-- p_key: a JSON object {"col": value, ...} naming every key column, or a bare value for a
-- single-column key. The result has the key's values typed as the columns are, so that
-- {"id": "7"}, {"id": 7} and 7 all give {"id": 7}. p_part: the object may name only some of
-- the key columns (a bare value is then the first one), for listings that select every row
-- having them. Values are read without running code of the table's owner (audit._read_type).
DECLARE
    v_keys text[];
    v_obj jsonb;
    v_extra text[];
    v_given text[];
    v_missing text[];
    v_result jsonb;
BEGIN
    PERFORM audit._tracked(p_table);
    v_keys := audit._key_columns(p_table);
    IF pg_catalog.ltrim(p_key) LIKE '{%' THEN
        BEGIN
            v_obj := p_key::jsonb;
        EXCEPTION WHEN invalid_text_representation THEN
            RAISE EXCEPTION 'the key % is not valid JSON', p_key USING ERRCODE = 'invalid_parameter_value';
        END;
    ELSIF pg_catalog.cardinality(v_keys) = 1 OR p_part THEN
        v_obj := pg_catalog.jsonb_build_object(v_keys[1], p_key);
    ELSE
        RAISE EXCEPTION 'table % has a key of % columns (%); give it as a JSON object', audit._qualified(p_table),
            pg_catalog.cardinality(v_keys), pg_catalog.array_to_string(v_keys, ', ')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT pg_catalog.array_agg(k) INTO v_extra FROM pg_catalog.jsonb_object_keys(v_obj) AS k WHERE k <> ALL (v_keys);
    IF v_extra IS NOT NULL THEN
        RAISE EXCEPTION 'the key of % is (%): % % not one of its columns', audit._qualified(p_table),
            pg_catalog.array_to_string(v_keys, ', '), pg_catalog.array_to_string(v_extra, ', '),
            CASE WHEN pg_catalog.cardinality(v_extra) = 1 THEN 'is' ELSE 'are' END
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT pg_catalog.array_agg(k ORDER BY n) FILTER (WHERE v_obj ? k),
           pg_catalog.array_agg(k ORDER BY n) FILTER (WHERE NOT v_obj ? k)
      INTO v_given, v_missing
      FROM pg_catalog.unnest(v_keys) WITH ORDINALITY AS u(k, n);
    IF v_given IS NULL OR (v_missing IS NOT NULL AND NOT p_part) THEN
        RAISE EXCEPTION 'the key of % is (%): % missing', audit._qualified(p_table),
            pg_catalog.array_to_string(v_keys, ', '), pg_catalog.array_to_string(v_missing, ', ')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = CASE WHEN v_given IS NOT NULL THEN 'One row needs its whole key; listings of history accept a part of it.' END;
    END IF;
    EXECUTE pg_catalog.format('SELECT %s FROM %s', audit._key_sql('r', v_given, p_table),
                              audit._key_record_sql(p_table, v_given, '$1', 'r'))
       INTO v_result USING v_obj;
    RETURN v_result;
END
$$;

COMMENT ON FUNCTION audit.pk(regclass, text, boolean) IS
    'The key of a row of an audited table as stored in the log, from a JSON object or (single-column keys) a bare value, typed like the key columns: audit.pk(''sales.orders'', ''7'') = {"id": 7}. With p_part, a part of a composite key (the columns given; a bare value is the first column), to select every row that has it.';


CREATE OR REPLACE FUNCTION audit._live_keys(p_table regclass, p_part jsonb) RETURNS SETOF jsonb
LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    -- The live table is read: a row-level security policy (its owner's code) must refuse, not run.
    SET row_security = off
    SET timezone = 'UTC' SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres'
    SET extra_float_digits = 1 SET bytea_output = 'hex' AS $$
-- The keys (as the log stores them) of the rows of the table now that have the key columns of
-- p_part (a part of the key, from audit.pk(..., true)), in key order as JSON. Read with the
-- caller's rights; no code of the table's owner runs (audit._key_record_sql).
DECLARE
    v_keys text[] := audit._key_columns(p_table);
    v_given text[] := ARRAY(SELECT k FROM pg_catalog.unnest(v_keys) AS k WHERE p_part ? k);
BEGIN
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT s.key FROM (SELECT %s AS key FROM %s AS r, %s WHERE %s) AS s ORDER BY s.key',
        audit._key_sql('r', v_keys, p_table), p_table, audit._key_record_sql(p_table, v_given, '$1', 'k'),
        audit._keys_equal_sql('r', 'k', v_given, p_table))
      USING p_part;
END
$$;

COMMENT ON FUNCTION audit._live_keys(regclass, jsonb) IS
    'Internal. Keys of the rows of an audited table now that have the given part of the key (as JSON objects, in order).';


CREATE OR REPLACE FUNCTION audit._pk_variants(p_table regclass, p_pk jsonb) RETURNS jsonb[]
LANGUAGE sql STABLE AS $$
    -- The key as written under today's names and under the names of every past layout.
    SELECT pg_catalog.array_agg(DISTINCT v)
      FROM (SELECT p_pk AS v
            UNION ALL
            SELECT audit._rename_keys(p_pk, (SELECT pg_catalog.jsonb_object_agg(e.value ->> 0, e.key)
                                               FROM pg_catalog.jsonb_each(r.map) AS e
                                              WHERE pg_catalog.jsonb_typeof(e.value) = 'string'))
              FROM audit._renames(p_table) AS r) AS s
$$;

COMMENT ON FUNCTION audit._pk_variants(regclass, jsonb) IS
    'Internal. A key under today''s column names and under the names it had in every past layout (key columns renamed).';


CREATE OR REPLACE FUNCTION audit._key_holds_numeric(p_table regclass) RETURNS boolean
LANGUAGE sql STABLE AS $$
    -- Whether the key of an audited table, as JSON, can hold a value of type numeric (a key
    -- column of that type, or of a domain, array or composite type made of it at any depth):
    -- one such value has several spellings (1.5 and 1.50, 3 and 3.0) that jsonb finds equal
    -- and text does not, so that readers comparing keys as text (the archive's) must not.
    WITH RECURSIVE t(typ) AS (
        SELECT a.atttypid
          FROM pg_catalog.pg_attribute AS a JOIN audit.tracked_table AS x ON x.relid = a.attrelid
         WHERE a.attrelid = p_table AND a.attnum = ANY (x.key_attnums)
        UNION
        SELECT n.typ
          FROM t JOIN pg_catalog.pg_type AS y ON y.oid = t.typ,
               LATERAL (SELECT y.typbasetype WHERE y.typtype = 'd'
                        UNION ALL
                        SELECT audit._array_element(y.oid)
                        UNION ALL
                        SELECT a.atttypid FROM pg_catalog.pg_attribute AS a
                         WHERE y.typtype = 'c' AND a.attrelid = y.typrelid
                           AND a.attnum > 0 AND NOT a.attisdropped) AS n(typ)
         WHERE n.typ IS NOT NULL
    )
    SELECT EXISTS (SELECT FROM t WHERE t.typ = 'pg_catalog.numeric'::pg_catalog.regtype)
$$;

COMMENT ON FUNCTION audit._key_holds_numeric(regclass) IS
    'Internal. Whether the key of an audited table can hold a numeric value (of which JSON text has several spellings).';


-- One pair of helpers for every query that reads images under today's column names (earlier
-- versions had a second pair in the revert).
DROP FUNCTION IF EXISTS audit._renamed_sql(regclass, text);
DROP FUNCTION IF EXISTS audit._renames_join_sql(regclass);
DROP FUNCTION IF EXISTS audit._revert_mapped(text, text, boolean);
DROP FUNCTION IF EXISTS audit._revert_renames_join(text, oid, boolean);

CREATE OR REPLACE FUNCTION audit._renamed_sql(p_table regclass, p_column text, p_alias text DEFAULT 'c') RETURNS text
LANGUAGE sql STABLE AS $$
    -- <alias>.<column> (pk, old or new) of a change under today's column names; plain when
    -- nothing was renamed.
    SELECT CASE WHEN EXISTS (SELECT FROM audit._renames(p_table))
                THEN pg_catalog.format('audit._rename_keys(%1$s.%2$I, %1$s_rn.map)', p_alias, p_column)
                ELSE pg_catalog.format('%s.%I', p_alias, p_column) END
$$;

COMMENT ON FUNCTION audit._renamed_sql(regclass, text, text) IS
    'Internal. SQL expression of a key or image column (pk, old, new) of the change alias p_alias (an audit.change row) under today''s column names (needs audit._renames_join_sql for the same alias).';


CREATE OR REPLACE FUNCTION audit._renames_join_sql(p_table regclass, p_alias text DEFAULT 'c') RETURNS text
LANGUAGE sql STABLE AS $$
    -- The join that gives the change p_alias the name map of its time (<alias>_rn.map); empty
    -- when nothing was renamed.
    SELECT CASE WHEN EXISTS (SELECT FROM audit._renames(p_table))
                THEN pg_catalog.format('LEFT JOIN audit._renames(%2$s::oid) AS %1$s_rn ON %1$s.clock_at >= %1$s_rn.valid_from'
                                       ' AND (%1$s_rn.valid_to IS NULL OR %1$s.clock_at < %1$s_rn.valid_to)', p_alias, p_table::oid)
                ELSE '' END
$$;

COMMENT ON FUNCTION audit._renames_join_sql(regclass, text) IS
    'Internal. SQL join giving the change alias p_alias (an audit.change row) the column name map of its time (<alias>_rn.map).';


CREATE OR REPLACE FUNCTION audit._first_after_sql(p_table regclass) RETURNS text
LANGUAGE sql STABLE AS $$
    -- The first change of every key of p_table committed after $1 (or still in progress), with
    -- its key and old image under today's column names. Columns: pk, old. Keys are sorted with
    -- their change ids only; the images are fetched afterwards by id.
    SELECT pg_catalog.format(
        'SELECT f.pk, %1$s AS old FROM ('
        '  SELECT DISTINCT ON (m.pk) m.pk, m.id, m.started_at FROM ('
        '   SELECT %2$s AS pk, c.id, c.started_at'
        '     FROM %5$s AS c JOIN %6$s AS x ON x.txid = c.txid AND x.started_at = c.started_at %3$s'
        '    WHERE c.relid = %4$s::oid AND c.pk IS NOT NULL AND (x.committed_at > $1 OR x.committed_at IS NULL)) AS m'
        '  ORDER BY m.pk, m.id) AS f'
        ' JOIN %5$s AS c ON c.id = f.id AND c.started_at = f.started_at %3$s',
        audit._renamed_sql(p_table, 'old'),
        audit._renamed_sql(p_table, 'pk'),
        audit._renames_join_sql(p_table),
        p_table::oid,
        audit._log_sql('change'), audit._log_sql('transaction'))
$$;

COMMENT ON FUNCTION audit._first_after_sql(regclass) IS
    'Internal. SQL of the first change of every key committed after the instant $1, key and old image under today''s column names.';


CREATE OR REPLACE FUNCTION audit._projection_sql(p_table regclass, p_at timestamptz, p_alias text) RETURNS text
LANGUAGE sql STABLE AS $$
    -- The table's columns for a rebuilt row: NULL for excluded columns and columns added after p_at.
    SELECT pg_catalog.string_agg(
        CASE WHEN a.attnum = ANY (t.excluded_attnums) OR NOT a.attnum = ANY (coalesce(audit._columns_at(p_table, p_at), ARRAY[a.attnum]))
             THEN pg_catalog.format('NULL::%s AS %I', pg_catalog.format_type(a.atttypid, a.atttypmod), a.attname)
             ELSE pg_catalog.format('%s.%I', p_alias, a.attname) END,
        ', ' ORDER BY a.attnum)
      FROM pg_catalog.pg_attribute AS a, audit.tracked_table AS t
     WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped AND t.relid = p_table
$$;

COMMENT ON FUNCTION audit._projection_sql(regclass, timestamptz, text) IS
    'Internal. Select list of a rebuilt row of a table: its columns, with NULL for excluded columns and for columns added after the instant.';


CREATE OR REPLACE FUNCTION audit._table_at_sql(p_table regclass, p_at timestamptz) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_keys text[] := audit._key_columns(p_table);
    v_only text := CASE WHEN (SELECT c.relkind FROM pg_catalog.pg_class AS c WHERE c.oid = p_table) = 'r'
                        THEN 'ONLY ' ELSE '' END;
BEGIN
    RETURN pg_catalog.format(
        'WITH later AS (%s) '
        'SELECT %s FROM ('
        ' SELECT r.* FROM %s%s AS r WHERE NOT EXISTS (SELECT FROM later AS l WHERE l.pk = %s)'
        ' UNION ALL'
        ' SELECT r.* FROM later AS l, pg_catalog.jsonb_populate_record(NULL::%s, l.old) AS r WHERE l.old IS NOT NULL'
        ') AS p',
        audit._first_after_sql(p_table),
        audit._projection_sql(p_table, p_at, 'p'),
        v_only, p_table, audit._key_sql('r', v_keys, p_table),
        p_table);
END
$$;

COMMENT ON FUNCTION audit._table_at_sql(regclass, timestamptz) IS
    'Internal. SQL rebuilding a whole table as it was at $1 (rows unchanged since, plus the first old image of every key changed since).';


CREATE OR REPLACE FUNCTION audit._check_typed_input(p_table regclass) RETURNS void
LANGUAGE plpgsql STABLE AS $$
-- Rebuilding typed rows of a table from its images reads every column as its own type, which
-- runs the CHECK constraints of its domains with the caller's rights. Refused when any of them
-- is code of a role other than a superuser or the audit owner (audit._input_is_safe), unless
-- the caller, not a superuser, already has that role's rights (it could run the code anyway).
DECLARE
    v_unsafe text;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.format('%I (%s)', a.attname, pg_catalog.format_type(a.atttypid, NULL)), ', ' ORDER BY a.attnum)
      INTO v_unsafe
      FROM pg_catalog.pg_attribute AS a
      JOIN pg_catalog.pg_type AS ty ON ty.oid = a.atttypid
     WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped
       AND NOT audit._input_is_safe(a.atttypid)
       AND (NOT pg_catalog.pg_has_role(current_user, ty.typowner, 'USAGE')
            OR (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user));
    IF v_unsafe IS NOT NULL THEN
        RAISE EXCEPTION 'rebuilding typed rows of % would run code its owner wrote (the CHECK constraints of the types of %) with your rights', audit._qualified(p_table), v_unsafe
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'audit.row_at and audit.history give the same rows as JSON; or rebuild them as the role that owns those types.';
    END IF;
END
$$;

COMMENT ON FUNCTION audit._check_typed_input(regclass) IS
    'Internal. Refuses to rebuild typed rows of a table when that would run the CHECK constraints of domains another role wrote with the caller''s rights.';


CREATE OR REPLACE FUNCTION audit.table_at(p_row anyelement, p_at timestamptz) RETURNS SETOF anyelement
LANGUAGE plpgsql STABLE
    -- Generated SQL compares values of the table's types: only pg_catalog's operators.
    SET search_path = pg_catalog, pg_temp
    -- The live table is read: a row-level security policy (its owner's code) must refuse, not run.
    SET row_security = off
    -- Keys and images are compared as JSON: the same output settings as capture.
    SET timezone = 'UTC' SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres'
    SET extra_float_digits = 1 SET bytea_output = 'hex' AS $$
DECLARE
    v_table regclass;
BEGIN
    SELECT t.typrelid::regclass INTO v_table FROM pg_catalog.pg_type AS t WHERE t.oid = pg_catalog.pg_typeof(p_row);
    IF v_table IS NULL THEN
        RAISE EXCEPTION 'audit.table_at takes a row of the table, e.g. NULL::sales.orders, not %', pg_catalog.pg_typeof(p_row)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM audit._check_since(v_table, p_at);
    PERFORM audit._check_typed_input(v_table);
    RETURN QUERY EXECUTE audit._table_at_sql(v_table, p_at) USING p_at;
END
$$;

COMMENT ON FUNCTION audit.table_at(anyelement, timestamptz) IS
    'The whole audited table as it was at an instant, typed: SELECT * FROM audit.table_at(NULL::sales.orders, ''2026-01-31 12:00+00''). Columns added after the instant and excluded columns are NULL. Errors when capture was not on all the time since then.';


CREATE OR REPLACE FUNCTION audit.row_at(p_table regclass, p_pk jsonb, p_at timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE
    -- Generated SQL compares values of the table's types: only pg_catalog's operators.
    SET search_path = pg_catalog, pg_temp
    -- The live table is read: a row-level security policy (its owner's code) must refuse, not run.
    SET row_security = off
    -- Keys and images are compared as JSON: the same output settings as capture.
    SET timezone = 'UTC' SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres'
    SET extra_float_digits = 1 SET bytea_output = 'hex' AS $$
DECLARE
    t audit.tracked_table := audit._check_since(p_table, p_at);
    v_pk jsonb := audit.pk(p_table, p_pk::text);
    v_found boolean;
    v_old jsonb;
    v_row jsonb;
    v_keys text[] := audit._key_columns(p_table);
    v_variants jsonb[] := audit._pk_variants(p_table, v_pk);
    v_map jsonb;
    v_gone text[];
BEGIN
    -- The first change of this row committed after p_at: its old image is the row at p_at.
    EXECUTE pg_catalog.format(
        'SELECT true, c.old, rn.map'
        '  FROM %s AS c'
        '  JOIN %s AS x ON x.txid = c.txid AND x.started_at = c.started_at'
        '  LEFT JOIN audit._renames($1) AS rn'
        '    ON c.clock_at >= rn.valid_from AND (rn.valid_to IS NULL OR c.clock_at < rn.valid_to)'
        ' WHERE c.relid = $1 AND c.pk = ANY ($2)'
        '   AND (x.committed_at > $3 OR x.committed_at IS NULL)'
        ' ORDER BY c.id'
        ' LIMIT 1', audit._log_sql('change'), audit._log_sql('transaction'))
       INTO v_found, v_old, v_map USING p_table, v_variants, p_at;
    IF v_found THEN
        v_row := audit._rename_keys(v_old, v_map);
    ELSE
        EXECUTE pg_catalog.format(
            'SELECT %s FROM %s AS r, %s WHERE %s',
            audit._image_sql('r', p_table, '{}'), p_table, audit._key_record_sql(p_table, v_keys, '$1', 'k'),
            audit._keys_equal_sql('r', 'k', v_keys, p_table))
           INTO v_row USING v_pk;
    END IF;
    IF v_row IS NULL THEN
        RETURN NULL;
    END IF;
    -- Only what existed and was recorded at p_at: no excluded columns, none added since.
    SELECT pg_catalog.array_agg(a.attname::text) INTO v_gone
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped
       AND (a.attnum = ANY (t.excluded_attnums) OR NOT a.attnum = ANY (coalesce(audit._columns_at(p_table, p_at), ARRAY[a.attnum])));
    RETURN v_row - coalesce(v_gone, '{}');
END
$$;

COMMENT ON FUNCTION audit.row_at(regclass, jsonb, timestamptz) IS
    'One row of an audited table as it was at an instant, as JSONB under today''s column names (null: it did not exist then). p_pk: the key as a JSON object. Excluded columns and columns added since are left out.';


CREATE OR REPLACE FUNCTION audit.diff(p_table regclass, p_from timestamptz, p_to timestamptz)
RETURNS TABLE (pk jsonb, change text, before jsonb, after jsonb, changed text[])
LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    SET timezone = 'UTC' SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres'
    SET extra_float_digits = 1 SET bytea_output = 'hex' AS $$
DECLARE
    t audit.tracked_table := audit._check_since(p_table, p_from);
BEGIN
    IF p_to < p_from THEN
        RAISE EXCEPTION 'the end of the interval (%) is before its start (%)', audit._time_text(p_to), audit._time_text(p_from)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY EXECUTE pg_catalog.format(
        'WITH win AS ('
        '  SELECT %1$s AS pk, %2$s AS old, %3$s AS new, c.id'
        '    FROM %6$s AS c JOIN %7$s AS x ON x.txid = c.txid AND x.started_at = c.started_at %4$s'
        '   WHERE c.relid = %5$s::oid AND c.pk IS NOT NULL AND x.committed_at > $1 AND x.committed_at <= $2),'
        ' first AS (SELECT DISTINCT ON (w.pk) w.pk, w.old FROM win AS w ORDER BY w.pk, w.id),'
        ' last AS (SELECT DISTINCT ON (w.pk) w.pk, w.new FROM win AS w ORDER BY w.pk, w.id DESC)'
        ' SELECT f.pk,'
        '        CASE WHEN f.old IS NULL THEN ''INSERT'' WHEN l.new IS NULL THEN ''DELETE'' ELSE ''UPDATE'' END,'
        '        f.old, l.new,'
        '        CASE WHEN f.old IS NOT NULL AND l.new IS NOT NULL THEN audit.changed_columns(f.old, l.new) END'
        '   FROM first AS f JOIN last AS l ON l.pk = f.pk'
        '  WHERE f.old IS DISTINCT FROM l.new'
        '  ORDER BY f.pk',
        audit._renamed_sql(p_table, 'pk'),
        audit._renamed_sql(p_table, 'old'),
        audit._renamed_sql(p_table, 'new'),
        audit._renames_join_sql(p_table),
        p_table::oid,
        audit._log_sql('change'), audit._log_sql('transaction'))
    USING p_from, p_to;
END
$$;

COMMENT ON FUNCTION audit.diff(regclass, timestamptz, timestamptz) IS
    'Net change of every row of an audited table between two instants, consolidated over all the changes in between: INSERT (before null), DELETE (after null) or UPDATE with the columns that differ. Rows that end as they began are left out.';


CREATE OR REPLACE FUNCTION audit.blame(p_table regclass, p_pk jsonb)
RETURNS TABLE (column_name text, value jsonb, change_id bigint, op text, at timestamptz, txid xid8,
               actor text, db_user text, role text)
LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    -- The live table is read: a row-level security policy (its owner's code) must refuse, not run.
    SET row_security = off
    SET timezone = 'UTC' SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres'
    SET extra_float_digits = 1 SET bytea_output = 'hex' AS $$
DECLARE
    t audit.tracked_table := audit._tracked(p_table);
    v_pk jsonb := audit.pk(p_table, p_pk::text);
    v_keys text[] := audit._key_columns(p_table);
    v_variants jsonb[] := audit._pk_variants(p_table, v_pk);
    v_live jsonb;
BEGIN
    EXECUTE pg_catalog.format(
        'SELECT %s FROM %s AS r, %s WHERE %s',
        audit._image_sql('r', p_table, '{}'), p_table, audit._key_record_sql(p_table, v_keys, '$1', 'k'),
        audit._keys_equal_sql('r', 'k', v_keys, p_table))
       INTO v_live USING v_pk;
    IF v_live IS NULL THEN
        RAISE EXCEPTION 'table % has no row with key % now', audit._qualified(p_table), v_pk
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'audit.history (pgaudit-tool history --pk) shows what happened to it.';
    END IF;
    v_live := v_live - audit._current_columns(p_table, t.excluded_attnums);
    RETURN QUERY EXECUTE pg_catalog.format(
        'WITH ch AS ('
        '    SELECT c.id, c.op, c.clock_at, c.txid, c.started_at, c.role,'
        '           audit._rename_keys(c.old, rn.map) AS old, audit._rename_keys(c.new, rn.map) AS new'
        '      FROM %s AS c'
        '      LEFT JOIN audit._renames($1) AS rn'
        '        ON c.clock_at >= rn.valid_from AND (rn.valid_to IS NULL OR c.clock_at < rn.valid_to)'
        '     WHERE c.relid = $1 AND c.pk = ANY ($2)'
        '), setter AS ('
        '    SELECT DISTINCT ON (k) k, ch.*'
        '      FROM ch, pg_catalog.jsonb_object_keys(ch.new) AS k'
        '     WHERE ch.old IS NULL OR ch.old -> k IS DISTINCT FROM ch.new -> k'
        '     ORDER BY k, ch.id DESC'
        ')'
        ' SELECT e.key, e.value, s.id,'
        '        CASE s.op WHEN ''I'' THEN ''INSERT'' WHEN ''U'' THEN ''UPDATE'' END,'
        '        s.clock_at, s.txid, x.actor, x.db_user, s.role'
        '   FROM pg_catalog.jsonb_each($3) AS e'
        '   LEFT JOIN setter AS s ON s.k = e.key'
        '   LEFT JOIN %s AS x ON x.txid = s.txid AND x.started_at = s.started_at'
        '  ORDER BY (SELECT a.attnum FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = $1 AND a.attname = e.key)',
        audit._log_sql('change'), audit._log_sql('transaction'))
      USING p_table, v_variants, v_live;
END
$$;

COMMENT ON FUNCTION audit.blame(regclass, jsonb) IS
    'Who last set each column of a row that exists now, and when (change id, time, transaction, actor, login and role). Columns nobody changed since auditing began have null change columns.';


CREATE OR REPLACE VIEW audit.history_columns AS
SELECT h.id, h.table_name, h.op, h.pk, k AS column_name, h.old -> k AS before, h.new -> k AS after,
       h.at, h.txid, h.actor, h.db_user, h.role
  FROM audit.history AS h,
       LATERAL (SELECT pg_catalog.jsonb_object_keys(coalesce(h.new, '{}'))
                UNION SELECT pg_catalog.jsonb_object_keys(coalesce(h.old, '{}'))) AS u(k)
 WHERE h.old -> k IS DISTINCT FROM h.new -> k;

COMMENT ON VIEW audit.history_columns IS
    'The history flattened for people: one row per column a change set or cleared (INSERT: every column; DELETE and TRUNCATE: every column; UPDATE: the columns that differ).';

REVOKE ALL ON audit.history_columns FROM PUBLIC;
