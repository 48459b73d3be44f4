-- pgaudit_tool: revert.
--
-- A revert undoes a set of recorded changes (audit.change ids), row by row, in one transaction.
--
--   audit.revert_selection(selection)          the change ids a selection names (validated)
--   audit.revert_plan(changes, on_conflict)    what undoing them means for every row, and conflicts
--   audit.revert_script(selection, ...)        the SQL statements of the revert, in order
--   audit.revert(selection, ...)               runs them: the whole revert from psql
--   audit.revert_triggers(tables)              the application triggers a revert switches off
--
-- Per row (a table and a key, under today's column names) touched by the set:
--   target   = "old" of the set's FIRST change of the row (null: the row must not exist);
--   expected = "new" of the set's LAST change of the row (what the set left behind);
--   live     = the row now.
-- Action: DELETE (target null, row exists), INSERT (target, no row), UPDATE of the columns that
-- differ, or NONE (the row already is the target). Excluded and generated columns are never
-- written; identity columns are re-inserted with OVERRIDING SYSTEM VALUE.
-- Conflict, judged per row: the live row differs from expected (in any recorded column), or a
-- change that is not in the set touched the row after the set's first change of it. Such a row
-- carries later work that the revert would overwrite; the conflict lists those later changes.
--
-- Selections (a JSON object; the CLI builds it from its options). Messages name its keys and
-- the functions' arguments in double quotes ("since", "fire_triggers"): the Python API takes
-- them as keyword arguments of the same names, and the CLI shows them as its flags.
--   {"changes": [id, ...]}                          these changes
--   {"txids": [txid, ...]}                          every change of these transactions
--   {"actor": A, "db_user": U, "since": T1, "until": T2}
--        every change of the transactions of actor A and/or login U that COMMITTED after T1 and at
--        or before T2 (no "until": up to now), i.e. what took the state at T1 to the state at T2
--   {"table": T, "to": T1}                          table T back to its state at T1
--   {"table": T, "pk": KEY, "to": T1}               one row back to its state at T1
--
-- The statements read a temporary plan table (pg_temp.pgaudit_revert_plan) that the script
-- itself creates, so the printed script is runnable as is in psql. Each data statement checks
-- that it touched exactly the rows the plan expects (a row changed concurrently makes the revert
-- fail and change nothing), and the revert is captured like any other change, under the actor
-- given (default 'pgaudit-tool revert') with the context {"revert": {...}} naming what it undid.
-- The application's triggers on the tables written (not constraint triggers, not capture) are
-- switched off for the data statements, so that rows come back exactly as recorded (a trigger
-- stamping last_update = now() would otherwise stamp the revert's time); p_fire_triggers keeps
-- them firing. This needs ownership of those tables (ALTER TABLE); the switch is transactional.


CREATE OR REPLACE FUNCTION audit._revert_check_list(p_value jsonb, p_what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_value IS NOT NULL AND (pg_catalog.jsonb_typeof(p_value) <> 'array' OR pg_catalog.jsonb_array_length(p_value) = 0) THEN
        RAISE EXCEPTION 'the revert selection''s % must be a non-empty JSON array, not %', p_what, p_value
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = pg_catalog.format('For example {"%s": [12, 13]}.', p_what);
    END IF;
END
$$;

COMMENT ON FUNCTION audit._revert_check_list(jsonb, text) IS
    'Internal. Raises a clear error unless a list of a revert selection is a non-empty JSON array.';


CREATE OR REPLACE FUNCTION audit._revert_check_table(p_relid oid) RETURNS regclass
LANGUAGE plpgsql STABLE AS $$
-- The audited table a change belongs to, if a revert may write it: it exists and is captured.
DECLARE
    t audit.tracked_table;
BEGIN
    SELECT * INTO t FROM audit.tracked_table AS r WHERE r.relid = p_relid;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = p_relid) THEN
        RAISE EXCEPTION 'table %.% was dropped; its changes cannot be reverted', pg_catalog.quote_ident(t.schema_name), pg_catalog.quote_ident(t.table_name)
            USING ERRCODE = 'undefined_table',
                  HINT = 'Leave its changes out of the selection.';
    END IF;
    IF NOT t.enabled THEN
        RAISE EXCEPTION 'capture of % is off, so a revert of its changes would not be recorded', audit._qualified(p_relid::regclass)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('Run audit.enable(%L) first (changes made while capture was off show as conflicts).', audit._qualified(p_relid::regclass));
    END IF;
    RETURN p_relid::regclass;
END
$$;

COMMENT ON FUNCTION audit._revert_check_table(oid) IS
    'Internal. The table of reverted changes as regclass; raises when it was dropped or its capture is off (a revert must be recorded).';


CREATE OR REPLACE FUNCTION audit._revert_selection_kind(p_selection jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
-- The kind of a revert selection (changes, txids, actor, db_user or table: actor and db_user may
-- go together, as actor), after checking that its keys make one valid selection.
DECLARE
    v_keys text[];
    v_unknown text;
    v_kinds text[];
BEGIN
    IF p_selection IS NULL OR pg_catalog.jsonb_typeof(p_selection) <> 'object' THEN
        RAISE EXCEPTION 'a revert selection is a JSON object, not %', coalesce(p_selection::text, 'null')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example {"txids": [1234]} or {"actor": "mallory", "since": "2026-11-25 14:00+00"}.';
    END IF;
    SELECT pg_catalog.array_agg(k ORDER BY k) INTO v_keys FROM pg_catalog.jsonb_object_keys(p_selection) AS k;
    SELECT pg_catalog.string_agg(k, ', ') INTO v_unknown
      FROM pg_catalog.unnest(v_keys) AS k WHERE k <> ALL ('{changes,txids,actor,db_user,since,until,table,pk,to}');
    IF v_unknown IS NOT NULL THEN
        RAISE EXCEPTION 'unknown key(s) in the revert selection: %', v_unknown
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Select by changes, txids, actor/db_user with since (and until), or table with to (and pk).';
    END IF;
    v_kinds := ARRAY(SELECT k FROM pg_catalog.unnest(ARRAY['changes', 'txids', 'actor', 'db_user', 'table']) AS k
                      WHERE p_selection ? k AND NOT (k = 'db_user' AND p_selection ? 'actor'));
    IF pg_catalog.cardinality(v_kinds) = 0 THEN
        IF p_selection ?| ARRAY['since', 'until'] THEN
            RAISE EXCEPTION 'since and until select the changes of an actor or a login role, and neither is given'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Add "actor" or "db_user". To put a whole table back: "table" with "to".';
        ELSIF p_selection ?| ARRAY['to', 'pk'] THEN
            RAISE EXCEPTION 'to and pk need a table'
                USING ERRCODE = 'invalid_parameter_value', HINT = 'Add "table".';
        END IF;
        RAISE EXCEPTION 'nothing selected: say which changes to revert'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Select with "changes", "txids", "actor" or "db_user" with "since", or "table" with "to".';
    END IF;
    IF pg_catalog.cardinality(v_kinds) > 1 THEN
        RAISE EXCEPTION 'a revert selects by one of changes, txids, actor/db_user or table, not by %',
                pg_catalog.array_to_string(v_kinds, ' and ')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Run one revert per kind of selection.';
    END IF;
    IF v_kinds[1] <> 'table' AND p_selection ?| ARRAY['to', 'pk'] THEN
        RAISE EXCEPTION 'to and pk go with a table, not with %', v_kinds[1]
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_kinds[1] IN ('changes', 'txids') AND p_selection ?| ARRAY['since', 'until'] THEN
        RAISE EXCEPTION 'since and until go with an actor or a login role, not with %', v_kinds[1]
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN v_kinds[1];
END
$$;

COMMENT ON FUNCTION audit._revert_selection_kind(jsonb) IS
    'Internal. Validates the keys of a revert selection and returns its kind: changes, txids, actor (actor and/or db_user), db_user or table.';


CREATE OR REPLACE FUNCTION audit._revert_by_changes(p_selection jsonb) RETURNS bigint[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_ids bigint[];
    v_missing text;
BEGIN
    PERFORM audit._revert_check_list(p_selection -> 'changes', 'changes');
    v_ids := ARRAY(SELECT DISTINCT e::bigint FROM pg_catalog.jsonb_array_elements_text(p_selection -> 'changes') AS e ORDER BY 1);
    SELECT pg_catalog.string_agg(i::text, ', ' ORDER BY i) INTO v_missing
      FROM (SELECT i FROM pg_catalog.unnest(v_ids) AS i
             WHERE NOT EXISTS (SELECT FROM audit.change AS c WHERE c.id = i) ORDER BY i LIMIT 10) AS m;
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'no recorded change has id %', v_missing
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Find change ids with history (the id column).'
                      || CASE WHEN EXISTS (SELECT FROM audit.retired_partition)
                              THEN ' Changes of the partitions that left the log (audit.retired()) cannot be reverted.' ELSE '' END;
    END IF;
    RETURN v_ids;
END
$$;

COMMENT ON FUNCTION audit._revert_by_changes(jsonb) IS
    'Internal. The change ids of a selection {"changes": [...]}, each checked to exist.';


CREATE OR REPLACE FUNCTION audit._revert_by_txids(p_selection jsonb) RETURNS bigint[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_txids xid8[];
    v_missing text;
BEGIN
    PERFORM audit._revert_check_list(p_selection -> 'txids', 'txids');
    v_txids := ARRAY(SELECT DISTINCT e::xid8 FROM pg_catalog.jsonb_array_elements_text(p_selection -> 'txids') AS e);
    SELECT pg_catalog.string_agg(x::text, ', ' ORDER BY x) INTO v_missing
      FROM (SELECT x FROM pg_catalog.unnest(v_txids) AS x
             WHERE NOT EXISTS (SELECT FROM audit.change AS c WHERE c.txid = x) ORDER BY x LIMIT 10) AS m;
    IF v_missing IS NOT NULL THEN
        PERFORM audit._refuse_retired(pg_catalog.format('reverting transaction %s', x),
                                      'A revert reads the live log only: its changes cannot be reverted.', NULL, NULL, NULL, x)
           FROM pg_catalog.unnest(v_txids) AS x;
        RAISE EXCEPTION 'no audited change belongs to transaction %', v_missing
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Find transaction ids with history (the txid column).';
    END IF;
    RETURN ARRAY(SELECT c.id FROM audit.change AS c WHERE c.txid = ANY (v_txids) ORDER BY c.id);
END
$$;

COMMENT ON FUNCTION audit._revert_by_txids(jsonb) IS
    'Internal. The change ids of the transactions of a selection {"txids": [...]}, each checked to have changes.';


CREATE OR REPLACE FUNCTION audit._revert_by_subject(p_selection jsonb) RETURNS bigint[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_ids bigint[];
    v_since timestamptz;
    v_until timestamptz;
BEGIN
    IF NOT p_selection ? 'since' THEN
        RAISE EXCEPTION 'reverting the changes of an actor or a login role needs a start instant (since)'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Add "since": every transaction committed after it is reverted.';
    END IF;
    v_since := (p_selection ->> 'since')::timestamptz;
    v_until := (p_selection ->> 'until')::timestamptz;
    IF v_until < v_since THEN
        RAISE EXCEPTION 'the end of the window (%) is before its start (%)', audit._time_text(v_until), audit._time_text(v_since)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Transactions committed after v_since, of which some may have been dropped.
    PERFORM audit._refuse_retired(pg_catalog.format('reverting what was committed after %s', audit._time_text(v_since)),
                                  'A revert reads the live log only: start the window (since) after the latest commit they hold.',
                                  NULL, v_since, v_until, NULL);
    v_ids := ARRAY(
        SELECT c.id FROM audit.transaction AS x JOIN audit.change AS c ON c.txid = x.txid AND c.started_at = x.started_at
         WHERE x.committed_at > v_since AND (v_until IS NULL OR x.committed_at <= v_until)
           AND (NOT p_selection ? 'actor' OR x.actor = p_selection ->> 'actor')
           AND (NOT p_selection ? 'db_user' OR x.db_user = p_selection ->> 'db_user')
         ORDER BY c.id);
    IF pg_catalog.cardinality(v_ids) = 0 THEN
        RAISE EXCEPTION '%', pg_catalog.format('no audited transaction of %s committed after %s%s',
                pg_catalog.concat_ws(' and ',
                    CASE WHEN p_selection ? 'actor' THEN pg_catalog.format('actor %s', p_selection ->> 'actor') END,
                    CASE WHEN p_selection ? 'db_user' THEN pg_catalog.format('login role %s', p_selection ->> 'db_user') END),
                audit._time_text(v_since), CASE WHEN v_until IS NULL THEN '' ELSE pg_catalog.format(' and at or before %s', audit._time_text(v_until)) END)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Check the name and the window (it is on commit time); audit.history lists what they did.';
    END IF;
    RETURN v_ids;
END
$$;

COMMENT ON FUNCTION audit._revert_by_subject(jsonb) IS
    'Internal. The change ids of the transactions of an actor and/or login role (actor, db_user) committed in (since, until].';


CREATE OR REPLACE FUNCTION audit._revert_by_table(p_selection jsonb) RETURNS bigint[]
LANGUAGE plpgsql STABLE AS $$
-- A table (or one row of it) back to its state at an instant.
DECLARE
    v_to timestamptz;
    v_table regclass;
    v_pk jsonb;
BEGIN
    IF NOT p_selection ? 'to' THEN
        RAISE EXCEPTION 'a table is put back to its state at an instant: give to'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Add "to", the instant to go back to.';
    END IF;
    v_table := pg_catalog.to_regclass(p_selection ->> 'table');
    IF v_table IS NULL THEN
        RAISE EXCEPTION 'table % does not exist', p_selection ->> 'table'
            USING ERRCODE = 'undefined_table';
    END IF;
    v_to := (p_selection ->> 'to')::timestamptz;
    PERFORM audit._check_since(v_table, v_to);
    IF p_selection ? 'pk' THEN
        v_pk := audit.pk(v_table, CASE WHEN pg_catalog.jsonb_typeof(p_selection -> 'pk') = 'object'
                                       THEN (p_selection -> 'pk')::text ELSE p_selection ->> 'pk' END);
    END IF;
    RETURN ARRAY(
        SELECT c.id FROM audit.change AS c JOIN audit.transaction AS x ON x.txid = c.txid AND x.started_at = c.started_at
         WHERE c.relid = v_table AND (x.committed_at > v_to OR x.committed_at IS NULL)
           AND (v_pk IS NULL OR c.pk = ANY (audit._pk_variants(v_table, v_pk)))
         ORDER BY c.id);
END
$$;

COMMENT ON FUNCTION audit._revert_by_table(jsonb) IS
    'Internal. The change ids that took a table (or, with pk, one row) from its state at "to" to now.';


CREATE OR REPLACE FUNCTION audit.revert_selection(p_selection jsonb) RETURNS bigint[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN CASE audit._revert_selection_kind(p_selection)
               WHEN 'changes' THEN audit._revert_by_changes(p_selection)
               WHEN 'txids' THEN audit._revert_by_txids(p_selection)
               WHEN 'table' THEN audit._revert_by_table(p_selection)
               ELSE audit._revert_by_subject(p_selection) END;
END
$$;

COMMENT ON FUNCTION audit.revert_selection(jsonb) IS
    'The ids of the changes a revert selection names, validated: {"changes": [ids]}, {"txids": [txids]}, {"actor": A and/or "db_user": U, "since": T1, "until": T2} (transactions committed after T1 and at or before T2), {"table": T, "to": T1} or {"table": T, "pk": KEY, "to": T1} (changes committed after T1). Raises a clear error for unknown ids, bad combinations or an empty actor/db_user window.';


CREATE OR REPLACE FUNCTION audit._revert_diff_sql(p_table regclass, p_excluded text[], p_side text) RETURNS text
LANGUAGE sql STABLE AS $$
    -- SQL of the columns in which the image p_side (k.target or k.expected) differs from the
    -- live row (lv.j: the live row as JSONB; r.ctid null: no live row). Compared and restored
    -- columns: today's columns, neither excluded nor generated, compared as JSON; whole images
    -- first (one JSONB equality), columns only when they differ. For types whose JSON text
    -- depends on session settings (timestamptz and TimeZone, interval and IntervalStyle, floats,
    -- bytea, arrays and composites of them...) a value that differs as recorded is also typed and
    -- rendered again now, so that images captured under other settings compare by value.
    SELECT pg_catalog.format(
               'CASE WHEN r.ctid IS NULL OR %1$s IS NULL OR %1$s = lv.j THEN ''{}''::text[]'
               ' ELSE pg_catalog.array_remove(ARRAY[%2$s]::text[], NULL) END', p_side,
               pg_catalog.string_agg(pg_catalog.format(
                   'CASE WHEN %3$s ? %1$L AND %3$s -> %1$L IS DISTINCT FROM lv.j -> %1$L%2$s THEN %1$L END', c.name,
                   CASE WHEN NOT c.stable THEN pg_catalog.format(
                       ' AND pg_catalog.to_jsonb(%s) IS DISTINCT FROM lv.j -> %L',
                       audit._value_sql(audit._read_value_sql(p_table, c.name, p_side), c.typid),
                       c.name) ELSE '' END, p_side), ', ' ORDER BY c.attnum))
      FROM (SELECT a.attnum, a.attname::text AS name, a.atttypid AS typid,
                   ty.typtype = 'e' OR CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END IN (
                       'int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype, 'text'::regtype,
                       'varchar'::regtype, 'bpchar'::regtype, 'bool'::regtype, 'uuid'::regtype, 'jsonb'::regtype,
                       'json'::regtype, 'date'::regtype, 'timestamp'::regtype, 'time'::regtype, 'timetz'::regtype,
                       'oid'::regtype, 'name'::regtype, 'inet'::regtype, 'cidr'::regtype) AS stable
              FROM pg_catalog.pg_attribute AS a JOIN pg_catalog.pg_type AS ty ON ty.oid = a.atttypid
             WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated = '' AND a.attname::text <> ALL (p_excluded)) AS c
$$;

COMMENT ON FUNCTION audit._revert_diff_sql(regclass, text[], text) IS
    'Internal. SQL of the text[] of columns in which a recorded image (k.target or k.expected) differs from the live row, for audit._revert_plan_sql.';


CREATE OR REPLACE FUNCTION audit._revert_plan_sql(p_table regclass) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
-- The query planning the revert of the changes $1 (bigint[]) of one table; $2: force conflicts.
DECLARE
    t audit.tracked_table := audit._tracked(p_table);
    v_oid oid := p_table::oid;
    v_keys text[] := audit._key_columns(p_table);
    v_excluded text[] := pg_catalog.array_remove(audit._current_columns(p_table, t.excluded_attnums), NULL);
    v_renames boolean := EXISTS (SELECT FROM audit._renames(p_table));
    v_only text := CASE WHEN (SELECT c.relkind FROM pg_catalog.pg_class AS c WHERE c.oid = p_table) = 'r' THEN 'ONLY ' ELSE '' END;
    v_diff_target text;
    v_diff_expected text;
BEGIN
    v_diff_target := audit._revert_diff_sql(p_table, v_excluded, 'k.target');
    v_diff_expected := audit._revert_diff_sql(p_table, v_excluded, 'k.expected');

    RETURN pg_catalog.format($q$
WITH k AS (
    -- Per row (key under today's column names) touched by the changes to revert: the "old" of
    -- its first change (target) and the "new" of its last (expected).
    SELECT g.pk, g.first_id, g.last_id, g.n,
           %4$s OPERATOR(pg_catalog.-) %6$L::text[] AS target,
           %5$s OPERATOR(pg_catalog.-) %6$L::text[] AS expected
      FROM (SELECT %1$s AS pk, pg_catalog.min(c.id) AS first_id, pg_catalog.max(c.id) AS last_id, pg_catalog.count(*) AS n
              FROM pg_catalog.unnest($1::bigint[]) AS s(id)
              JOIN audit.change AS c ON c.id = s.id %2$s
             WHERE c.relid = %3$s::oid
             GROUP BY 1) AS g
      JOIN audit.change AS f ON f.id = g.first_id %7$s
      JOIN audit.change AS l ON l.id = g.last_id %8$s
), markers AS (
    SELECT c.id, c.op, c.clock_at, c.txid, c.role FROM audit.change AS c
     WHERE c.relid = %3$s::oid AND c.pk IS NULL AND c.id > (SELECT pg_catalog.min(k.first_id) FROM k)
), later AS (
    -- Changes not in the set that touched the row after the set's first change of it.
    SELECT o.pk, pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'change', o.id, 'op', CASE o.op WHEN 'I' THEN 'INSERT' WHEN 'U' THEN 'UPDATE' WHEN 'D' THEN 'DELETE' ELSE 'TRUNCATE' END,
               'at', o.clock_at, 'txid', o.txid::text::numeric, 'actor', x.actor, 'db_user', x.db_user, 'role', o.role)
               ORDER BY o.id) AS later
      FROM (SELECT k.pk, c.id, c.op, c.clock_at, c.txid, c.role
              FROM k %9$s
             WHERE NOT EXISTS (SELECT FROM pg_catalog.unnest($1::bigint[]) AS s(id) WHERE s.id = c.id)
            UNION ALL
            SELECT k.pk, m.id, m.op, m.clock_at, m.txid, m.role FROM k JOIN markers AS m ON m.id > k.first_id) AS o
      LEFT JOIN audit.transaction AS x ON x.txid = o.txid
     GROUP BY o.pk
)
SELECT %3$s::oid::regclass, %10$L::text, k.pk, a.action,
       a.action <> 'NONE' AND (NOT a.conflict OR $2), a.conflict,
       CASE WHEN NOT a.conflict THEN NULL
            WHEN k.expected IS NOT NULL AND r.ctid IS NULL THEN 'deleted later'
            WHEN k.expected IS NULL AND r.ctid IS NOT NULL THEN 'inserted later'
            WHEN pg_catalog.cardinality(d.exp_cols) > 0 THEN 'changed later'
            ELSE 'changed later and back' END,
       CASE WHEN a.action = 'UPDATE' THEN d.set_cols END,
       CASE WHEN a.conflict AND k.expected IS NOT NULL AND r.ctid IS NOT NULL THEN d.exp_cols END,
       k.target, k.expected, CASE WHEN a.conflict THEN lv.j END,
       r.xmin, k.first_id, k.last_id, k.n, lt.later
  FROM k
  LEFT JOIN later AS lt ON lt.pk = k.pk
  CROSS JOIN LATERAL %17$s
  LEFT JOIN %11$s%12$s AS r ON %13$s
  -- OFFSET 0: each evaluated once per row, not inlined into every reference.
  CROSS JOIN LATERAL (SELECT %16$s AS j OFFSET 0) AS lv
  CROSS JOIN LATERAL (SELECT %14$s AS set_cols, %15$s AS exp_cols OFFSET 0) AS d
  CROSS JOIN LATERAL (SELECT
        CASE WHEN k.target IS NULL AND r.ctid IS NULL THEN 'NONE'
             WHEN k.target IS NULL THEN 'DELETE'
             WHEN r.ctid IS NULL THEN 'INSERT'
             WHEN pg_catalog.cardinality(d.set_cols) > 0 THEN 'UPDATE'
             ELSE 'NONE' END AS action,
        (lt.later IS NOT NULL
         OR (k.expected IS NULL) <> (r.ctid IS NULL)
         OR pg_catalog.cardinality(d.exp_cols) > 0) AS conflict
        OFFSET 0) AS a
$q$,
        audit._renamed_sql(p_table, 'pk', 'c'),
        audit._renames_join_sql(p_table, 'c'),
        v_oid,
        audit._renamed_sql(p_table, 'old', 'f'),
        audit._renamed_sql(p_table, 'new', 'l'),
        v_excluded,
        audit._renames_join_sql(p_table, 'f'),
        audit._renames_join_sql(p_table, 'l'),
        -- Later changes of the same row, by key (under every name the key columns had).
        CASE WHEN v_renames
             THEN pg_catalog.format('CROSS JOIN LATERAL pg_catalog.unnest(audit._pk_variants(%1$s::oid::regclass, k.pk)) AS v(pk)'
                                    ' JOIN audit.change AS c ON c.relid = %1$s::oid AND c.pk = v.pk AND c.id > k.first_id', v_oid)
             ELSE pg_catalog.format('JOIN audit.change AS c ON c.relid = %s::oid AND c.pk = k.pk AND c.id > k.first_id', v_oid) END,
        audit._qualified(p_table),
        v_only,
        p_table,
        audit._keys_equal_sql('r', 'kp', v_keys, p_table),
        v_diff_target,
        v_diff_expected,
        audit._image_sql('r', v_oid, v_excluded),
        audit._key_record_sql(p_table, v_keys, 'k.pk', 'kp'));
END
$$;

COMMENT ON FUNCTION audit._revert_plan_sql(regclass) IS
    'Internal. The query planning the revert of the changes $1 of one table, one row per key: action, conflict, target/expected/live images, later changes ($2: apply conflicting rows too).';


CREATE OR REPLACE FUNCTION audit.revert_plan(p_changes bigint[], p_on_conflict text DEFAULT 'abort')
RETURNS TABLE (relid regclass, table_name text, pk jsonb, action text, apply boolean, conflict boolean,
               reason text, set_columns text[], conflict_columns text[], target jsonb, expected jsonb,
               live jsonb, live_xmin xid, first_change bigint, last_change bigint, changes bigint,
               later jsonb)
LANGUAGE plpgsql STABLE SET jit = off SET search_path = pg_catalog, pg_temp
    -- The live tables are read: a row-level security policy (its owner's code) must refuse, not run.
    SET row_security = off AS $$
#variable_conflict use_column
DECLARE
    r record;
    v_table regclass;
    v_keys text[];
    v_marker record;
    v_bad record;
BEGIN
    IF p_on_conflict IS NULL OR p_on_conflict NOT IN ('abort', 'skip', 'force') THEN
        RAISE EXCEPTION 'on_conflict is abort, skip or force, not %', coalesce(p_on_conflict, 'null')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- One pass over the changes: their tables, any TRUNCATE without content, any key that is
    -- not the table's key today (checked again through the renames when the table has some).
    FOR r IN WITH k AS MATERIALIZED (
                 SELECT t.relid, audit._current_columns(t.relid, t.key_attnums) AS keys FROM audit.tracked_table AS t)
             SELECT c.relid, pg_catalog.min(c.id) FILTER (WHERE c.pk IS NULL) AS marker,
                    pg_catalog.min(c.id) FILTER (WHERE NOT (c.pk ?& k.keys AND c.pk OPERATOR(pg_catalog.-) k.keys = '{}')) AS odd
               FROM pg_catalog.unnest(p_changes) AS s(id)
               JOIN audit.change AS c ON c.id = s.id
               LEFT JOIN k ON k.relid = c.relid
              GROUP BY c.relid ORDER BY c.relid LOOP
        v_table := audit._revert_check_table(r.relid);
        -- Undoing a change needs an unbroken history from just before it until now.
        PERFORM audit._check_unbroken(v_table, (SELECT pg_catalog.min(c.clock_at) - '1 microsecond'::interval
                                                  FROM pg_catalog.unnest(p_changes) AS s(id)
                                                  JOIN audit.change AS c ON c.id = s.id WHERE c.relid = r.relid));
        IF r.marker IS NOT NULL THEN
            SELECT c.id, c.clock_at INTO v_marker FROM audit.change AS c WHERE c.id = r.marker;
            RAISE EXCEPTION 'change % is a TRUNCATE of % at % recorded without its rows, so the rows it removed cannot be put back', v_marker.id, audit._qualified(v_table), audit._time_text(v_marker.clock_at)
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Leave that change out of the selection. Enable capture with TRUNCATE content (the default) to make TRUNCATE reversible.';
        END IF;
        IF r.odd IS NOT NULL THEN
            v_keys := audit._key_columns(v_table);
            SELECT c.id, c.pk INTO v_bad
              FROM pg_catalog.unnest(p_changes) AS s(id) JOIN audit.change AS c ON c.id = s.id
              LEFT JOIN audit._renames(v_table) AS rn ON c.clock_at >= rn.valid_from AND (rn.valid_to IS NULL OR c.clock_at < rn.valid_to)
             WHERE c.relid = r.relid
               AND NOT (audit._rename_keys(c.pk, rn.map) ?& v_keys AND audit._rename_keys(c.pk, rn.map) OPERATOR(pg_catalog.-) v_keys = '{}')
             LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'change % identifies its row of % by %, but the key of the table is now (%): rows cannot be matched across a change of key',
                        v_bad.id, audit._qualified(v_table), v_bad.pk, pg_catalog.array_to_string(v_keys, ', ')
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                          HINT = 'Leave changes recorded under the old key out of the selection.';
            END IF;
        END IF;
        RETURN QUERY EXECUTE audit._revert_plan_sql(v_table) USING p_changes, p_on_conflict = 'force';
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit.revert_plan(bigint[], text) IS
    'What reverting the changes p_changes means, one row per affected row (table and key under today''s column names): action DELETE, UPDATE (set_columns), INSERT or NONE; apply (false for a conflicting row unless p_on_conflict is force); conflict with its reason, the columns that differ from what the changes left (conflict_columns), and the later changes not in the set (later: change, op, at, txid, actor, db_user, role); target/expected/live images; live_xmin guards against concurrent writes.';


CREATE OR REPLACE FUNCTION audit._revert_order(p_relids oid[]) RETURNS TABLE (relid oid, depth integer)
LANGUAGE sql STABLE AS $$
    -- Depth of each table in the graph of foreign keys among p_relids: 0 for a table that
    -- references none of the others, else 1 + the depth of the deepest table it references.
    -- Left out: self-references (one statement checks them at its end) and DEFERRABLE keys
    -- (a revert defers them to COMMIT). A cycle of other keys is cut: see the README.
    WITH RECURSIVE e AS (
        SELECT DISTINCT f.conrelid AS child, f.confrelid AS parent
          FROM pg_catalog.pg_constraint AS f
         WHERE f.contype = 'f' AND f.conrelid = ANY (p_relids) AND f.confrelid = ANY (p_relids)
           AND f.conrelid <> f.confrelid AND NOT f.condeferrable
    ), walk (relid, depth, path) AS (
        SELECT r, 0, ARRAY[r] FROM pg_catalog.unnest(p_relids) AS r
        UNION ALL
        SELECT e.child, w.depth + 1, w.path || e.child
          FROM walk AS w JOIN e ON e.parent = w.relid
         WHERE e.child <> ALL (w.path)
    )
    SELECT w.relid, pg_catalog.max(w.depth)::integer FROM walk AS w GROUP BY w.relid
$$;

COMMENT ON FUNCTION audit._revert_order(oid[]) IS
    'Internal. Dependency depth of tables by their foreign keys among themselves (parents lower): revert deletes deepest first and inserts shallowest first.';


CREATE OR REPLACE FUNCTION audit._revert_default_sql(p_table regclass, p_attnum int2) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- The value a column gets when a re-inserted row's image lacks it (excluded column, or
    -- added after the image): its default, an identity's next value, its domain's default, NULL.
    SELECT pg_catalog.format('(%s)::%s', coalesce(
               (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef AS d
                 WHERE d.adrelid = p_table AND d.adnum = p_attnum),
               CASE WHEN a.attidentity <> '' THEN pg_catalog.format('pg_catalog.nextval(%L::regclass)',
                    pg_catalog.pg_get_serial_sequence(p_table::text, a.attname::text)) END,
               (SELECT pg_catalog.pg_get_expr(ty.typdefaultbin, 0) FROM pg_catalog.pg_type AS ty
                 WHERE ty.oid = a.atttypid AND ty.typdefaultbin IS NOT NULL),
               'NULL'),
           pg_catalog.format_type(a.atttypid, a.atttypmod))
      FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = p_table AND a.attnum = p_attnum
$$;

COMMENT ON FUNCTION audit._revert_default_sql(regclass, int2) IS
    'Internal. SQL expression of the value a column gets when a re-inserted row''s image lacks it: the column default, the next identity value, the domain default, else NULL.';


CREATE OR REPLACE FUNCTION audit._revert_dml(p_table regclass, p_action text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
-- The statement applying one action of the plan to one table, checked by audit._revert_count.
-- NULL when the action cannot occur (an UPDATE on a table without writable non-key columns).
DECLARE
    t audit.tracked_table := audit._tracked(p_table);
    v_name text := audit._qualified(p_table);
    v_keys text[] := audit._key_columns(p_table);
    v_excluded int2[] := t.excluded_attnums;
    v_only text := CASE WHEN (SELECT c.relkind FROM pg_catalog.pg_class AS c WHERE c.oid = p_table) = 'r' THEN 'ONLY ' ELSE '' END;
    v_plan text := pg_catalog.format('p.relid = %L::regclass AND p.action = %L AND p.apply', v_name, p_action);
    v_dml text;
    v_list text;
BEGIN
    IF p_action = 'DELETE' THEN
        v_dml := pg_catalog.format(
            E'DELETE FROM %1$s%2$s AS r\n'
             '      USING pg_temp.pgaudit_revert_plan AS p, pg_catalog.jsonb_populate_record(NULL::%2$s, p.pk) AS k\n'
             '     WHERE %3$s\n'
             '       AND %4$s AND r.xmin = p.live_xmin',
            v_only, v_name, v_plan,
            audit._keys_equal_sql('r', 'k', v_keys, p_table));
    ELSIF p_action = 'UPDATE' THEN
        -- Only the columns that differ (p.set_columns); never key, excluded, generated or
        -- GENERATED ALWAYS identity columns.
        SELECT pg_catalog.string_agg(pg_catalog.format(
                   E'\n           %1$I = CASE WHEN %1$L = ANY (p.set_columns) THEN v.%1$I ELSE r.%1$I END', a.attname), ',' ORDER BY a.attnum)
          INTO v_list
          FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
           AND a.attidentity <> 'a' AND a.attnum <> ALL (v_excluded) AND a.attname::text <> ALL (v_keys);
        IF v_list IS NULL THEN
            RETURN NULL;
        END IF;
        v_dml := pg_catalog.format(
            E'UPDATE %1$s%2$s AS r\n'
             '       SET%3$s\n'
             '      FROM pg_temp.pgaudit_revert_plan AS p, pg_catalog.jsonb_populate_record(NULL::%2$s, p.target) AS v\n'
             '     WHERE %4$s\n'
             '       AND %5$s AND r.xmin = p.live_xmin',
            v_only, v_name, v_list, v_plan,
            audit._keys_equal_sql('r', 'v', v_keys, p_table));
    ELSIF p_action = 'INSERT' THEN
        -- Every column but generated ones: the image's value, else the column's default
        -- (always the default for excluded columns, whose values were never recorded).
        v_dml := (
            SELECT pg_catalog.format(
                E'INSERT INTO %1$s AS r (%2$s)%3$s\n'
                 '     SELECT %4$s\n'
                 '       FROM pg_temp.pgaudit_revert_plan AS p, pg_catalog.jsonb_populate_record(NULL::%1$s, p.target) AS v\n'
                 '      WHERE %5$s',
                v_name,
                pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum),
                CASE WHEN pg_catalog.bool_or(a.attidentity = 'a') THEN ' OVERRIDING SYSTEM VALUE' ELSE '' END,
                pg_catalog.string_agg(CASE WHEN a.attnum = ANY (v_excluded) THEN audit._revert_default_sql(p_table, a.attnum)
                                           ELSE pg_catalog.format('CASE WHEN p.target ? %1$L THEN v.%1$I ELSE %2$s END',
                                                                  a.attname, audit._revert_default_sql(p_table, a.attnum)) END,
                                      E',\n            ' ORDER BY a.attnum),
                v_plan)
              FROM pg_catalog.pg_attribute AS a
             WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '');
    ELSE
        RAISE EXCEPTION 'unknown revert action %', p_action USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN pg_catalog.format(
        E'WITH done AS (\n    %s\n    RETURNING 1)\n'
         'SELECT audit._revert_count(%L::regclass, %L, (SELECT pg_catalog.count(*) FROM done),\n'
         '       (SELECT pg_catalog.count(*) FROM pg_temp.pgaudit_revert_plan AS p WHERE %s))',
        v_dml, v_name, p_action, v_plan);
END
$$;

COMMENT ON FUNCTION audit._revert_dml(regclass, text) IS
    'Internal. The statement that applies the DELETE, UPDATE or INSERT rows of the revert plan (pg_temp.pgaudit_revert_plan) to one table and checks it touched exactly the planned rows.';


CREATE OR REPLACE FUNCTION audit._revert_count(p_table regclass, p_action text, p_done bigint, p_planned bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF p_done IS DISTINCT FROM p_planned THEN
        RAISE EXCEPTION 'the revert was to % % row(s) of % but found % of them as planned: rows changed while the revert ran, so nothing was changed',
                pg_catalog.lower(p_action), p_planned, p_table, p_done
            USING ERRCODE = 'serialization_failure',
                  HINT = 'Run the revert again: it plans from the current state.';
    END IF;
    RETURN p_done;
END
$$;

COMMENT ON FUNCTION audit._revert_count(regclass, text, bigint, bigint) IS
    'Internal. Returns the number of rows a revert statement touched; raises (so the revert rolls back) when it differs from the plan. Executable by PUBLIC: the table''s owner runs it when a revert writes as that owner (audit._revert_writer); it calls nothing else of the schema.';


CREATE OR REPLACE FUNCTION audit._revert_refuse(p_conflicts bigint, p_rows text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_conflicts > 0 THEN
        RAISE EXCEPTION '%', pg_catalog.format(
                '%s row(s) were changed after the changes to revert, and reverting would overwrite that later work; nothing was changed: %s%s',
                p_conflicts, pg_catalog.array_to_string(p_rows[1:10], '; '),
                CASE WHEN p_conflicts > 10 THEN pg_catalog.format('; and %s more', p_conflicts - 10) ELSE '' END)
            USING ERRCODE = 'RV001',
                  HINT = 'See them in a dry run (audit.revert_plan, "dry_run"); then "on_conflict" skip leaves them as they are, force overwrites them.';
    END IF;
END
$$;

COMMENT ON FUNCTION audit._revert_refuse(bigint, text[]) IS
    'Internal. Raises (SQLSTATE RV001) when a revert with on_conflict = abort has conflicting rows, naming the first ones.';


CREATE OR REPLACE FUNCTION audit._revert_context(p_selection jsonb, p_changes bigint[]) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    -- The context recorded with the revert's transaction: what it undid (at most 1000 txids).
    SELECT pg_catalog.jsonb_build_object('revert', pg_catalog.jsonb_build_object(
               'selection', p_selection,
               'changes', coalesce(pg_catalog.cardinality(p_changes), 0),
               'transactions', pg_catalog.count(*),
               'txids', coalesce(pg_catalog.jsonb_agg(x.txid::text::numeric ORDER BY x.txid)
                                     FILTER (WHERE x.n <= 1000), '[]')))
      FROM (SELECT c.txid, pg_catalog.row_number() OVER (ORDER BY c.txid) AS n
              FROM (SELECT DISTINCT c.txid FROM pg_catalog.unnest(p_changes) AS s(id)
                      JOIN audit.change AS c ON c.id = s.id) AS c) AS x
$$;

COMMENT ON FUNCTION audit._revert_context(jsonb, bigint[]) IS
    'Internal. The pgaudit.context of a revert: {"revert": {"selection", "changes", "transactions", "txids"}} (txids: the first 1000).';


CREATE OR REPLACE FUNCTION audit.revert_triggers(p_tables regclass[])
RETURNS TABLE (table_name text, trigger_name text, enabled "char", suppress text, restore text)
LANGUAGE sql STABLE AS $$
    -- The application triggers a revert's writes to p_tables would fire: every enabled trigger
    -- on INSERT, UPDATE or DELETE of the tables and of their partitions, except the server's own
    -- (foreign keys), constraint triggers, and pgaudit_tool's (capture, guard): their functions
    -- live in the audit schema. ONLY: a partition's trigger is listed (and switched) on its own.
    SELECT audit._qualified(t.tgrelid::regclass), t.tgname::text, t.tgenabled,
           pg_catalog.format('ALTER TABLE ONLY %s DISABLE TRIGGER %I', audit._qualified(t.tgrelid::regclass), t.tgname),
           pg_catalog.format('ALTER TABLE ONLY %s ENABLE %sTRIGGER %I', audit._qualified(t.tgrelid::regclass),
                             CASE t.tgenabled WHEN 'A' THEN 'ALWAYS ' WHEN 'R' THEN 'REPLICA ' ELSE '' END, t.tgname)
      FROM pg_catalog.unnest(p_tables) AS r(relid)
     -- pg_partition_tree lists nothing for a table that is not partitioned.
     CROSS JOIN LATERAL (SELECT r.relid UNION SELECT t.relid FROM pg_catalog.pg_partition_tree(r.relid) AS t) AS p
      JOIN pg_catalog.pg_trigger AS t ON t.tgrelid = p.relid
      JOIN pg_catalog.pg_proc AS f ON f.oid = t.tgfoid
     WHERE NOT t.tgisinternal AND t.tgconstraint = 0 AND t.tgenabled <> 'D'
       AND (t.tgtype::integer & 28) <> 0   -- fires on INSERT (4), DELETE (8) or UPDATE (16)
       AND f.pronamespace <> 'audit'::regnamespace
     ORDER BY 1, 2
$$;

COMMENT ON FUNCTION audit.revert_triggers(regclass[]) IS
    'The application triggers that a revert writing the given tables suppresses (unless told to fire them): enabled, user-defined, non-constraint triggers on INSERT/UPDATE/DELETE of the tables and their partitions, other than pgaudit_tool''s own; with the ALTER TABLE statements that switch each off and back to its state (enabled: O, A or R as in pg_trigger.tgenabled).';


CREATE OR REPLACE FUNCTION audit._revert_deferred(p_tables regclass[], p_referencing boolean) RETURNS text
LANGUAGE sql STABLE AS $$
    -- SET CONSTRAINTS ... IMMEDIATE for the deferrable constraints whose checks can be pending
    -- on the tables: with p_referencing false, those defined on them (foreign keys from them,
    -- constraint triggers on them: run as the tables' writer); with p_referencing true, foreign
    -- keys of other tables referencing them (the server's own checks: run as the reverter, who
    -- may name the other tables' schemas). ALTER TABLE refuses a table with pending trigger
    -- events, so they are checked before the triggers are switched back. Null when none.
    WITH tree AS (
        SELECT DISTINCT p.relid
          FROM pg_catalog.unnest(p_tables) AS r(relid)
         -- pg_partition_tree lists nothing for a table that is not partitioned.
         CROSS JOIN LATERAL (SELECT r.relid UNION SELECT t.relid FROM pg_catalog.pg_partition_tree(r.relid) AS t) AS p
    )
    SELECT 'SET CONSTRAINTS ' || pg_catalog.string_agg(DISTINCT pg_catalog.format('%I.%I', n.nspname, k.conname), ', ')
           || ' IMMEDIATE'
      FROM pg_catalog.pg_constraint AS k
      JOIN pg_catalog.pg_namespace AS n ON n.oid = k.connamespace
     WHERE k.condeferrable
       AND CASE WHEN p_referencing
                THEN k.confrelid IN (SELECT t.relid FROM tree AS t) AND k.conrelid NOT IN (SELECT t.relid FROM tree AS t)
                ELSE k.conrelid IN (SELECT t.relid FROM tree AS t) END
$$;

COMMENT ON FUNCTION audit._revert_deferred(regclass[], boolean) IS
    'Internal. The SET CONSTRAINTS ... IMMEDIATE statement that checks now the deferrable constraints defined on the given tables (and their partitions), or (p_referencing) those of other tables referencing them, so that ALTER TABLE may switch their triggers back; null when none.';


CREATE OR REPLACE FUNCTION audit._revert_check_owner(p_tables regclass[]) RETURNS void
LANGUAGE plpgsql STABLE AS $$
-- Only a table's owner may switch its triggers: say so before anything runs.
DECLARE
    r record;
BEGIN
    SELECT t.table_name, pg_catalog.string_agg(pg_catalog.quote_ident(t.trigger_name), ', ') AS triggers,
           c.relowner::regrole AS owner
      INTO r
      FROM audit.revert_triggers(p_tables) AS t
      JOIN pg_catalog.pg_class AS c ON c.oid = pg_catalog.to_regclass(t.table_name)
     WHERE NOT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')
     GROUP BY t.table_name, c.relowner
     ORDER BY t.table_name
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the revert would write table % and suppress its triggers (%), which only its owner % may switch off',
                        r.table_name, r.triggers, r.owner
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Run the revert as a member of that role, or let the triggers fire ("fire_triggers").';
    END IF;
END
$$;

COMMENT ON FUNCTION audit._revert_check_owner(regclass[]) IS
    'Internal. Raises insufficient_privilege, before a revert changes anything, when it would have to switch off triggers of a table the current user does not own.';


CREATE OR REPLACE FUNCTION audit._revert_writer(p_table regclass) RETURNS text
LANGUAGE plpgsql STABLE AS $$
-- The role a revert writes p_table as. Writing runs code the table's owner wrote (domain and
-- table CHECK constraints, index expressions, generated columns, rules, policies, constraint
-- triggers) with the writer's rights: a reverter who may become the owner writes as the owner
-- (SET ROLE), so that code never gains more rights than its author has; one who may not writes
-- as itself, unless it is the audit owner or a superuser and the owner is less trusted: refused.
-- Null: write as the current user.
DECLARE
    v_owner oid := (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = p_table);
BEGIN
    IF v_owner = (SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RETURN NULL;
    ELSIF pg_catalog.pg_has_role(current_user, v_owner,
                                 CASE WHEN pg_catalog.current_setting('server_version_num')::integer >= 160000
                                      THEN 'SET' ELSE 'MEMBER' END) THEN
        RETURN (SELECT r.rolname::text FROM pg_catalog.pg_roles AS r WHERE r.oid = v_owner);
    ELSIF audit._trusted_role((SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user))
          AND NOT audit._trusted_role(v_owner) THEN
        RAISE EXCEPTION 'the revert would write table % as %, running code its owner % wrote (constraints, domains, indexes, rules, policies) with the rights of %',
                        audit._qualified(p_table), current_user, v_owner::regrole, current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = pg_catalog.format('Run the revert as %s or as a role that may SET ROLE to it.', v_owner::regrole);
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION audit._revert_writer(regclass) IS
    'Internal. The role a revert writes a table as: its owner when the current user may SET ROLE to it (so the owner''s code in constraints, domains, indexes, rules and policies runs with the owner''s rights), null for the current user; raises when the current user is the audit owner or a superuser and may not become a less trusted owner.';


CREATE OR REPLACE FUNCTION audit._revert_wrapper(p_role text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.format('pg_temp.%I', pg_catalog.format('pgaudit_revert_as_%s',
                             (SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = p_role)))
$$;

COMMENT ON FUNCTION audit._revert_wrapper(text) IS
    'Internal. The name of the temporary function through which a revert writes as a table''s owner (audit._revert_wrapper_sql).';


CREATE OR REPLACE FUNCTION audit._revert_wrapper_sql(p_role text) RETURNS text[]
LANGUAGE sql STABLE AS $$
    -- A revert writes a table as its owner through a temporary SECURITY DEFINER function that
    -- the owner owns, not by SET ROLE: code of the owner's that the writes run (constraints,
    -- domains, index expressions, rules, policies, constraint triggers) runs in a security-
    -- definer context, where it cannot SET ROLE or SET SESSION AUTHORIZATION back to the
    -- reverter (a superuser, say), and settings it makes with SET LOCAL to search_path and
    -- row_security end with the call. p_count: the statement returns the row count.
    SELECT ARRAY[
        pg_catalog.format(
            E'CREATE FUNCTION %s(p_statement pg_catalog.text, p_count pg_catalog.bool) RETURNS pg_catalog.int8\n'
             '    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET row_security = on AS\n'
             '    $f$DECLARE n pg_catalog.int8; BEGIN IF p_count THEN EXECUTE p_statement INTO n; ELSE EXECUTE p_statement; END IF; RETURN n; END$f$',
            audit._revert_wrapper(p_role)),
        pg_catalog.format('ALTER FUNCTION %s(pg_catalog.text, pg_catalog.bool) OWNER TO %I', audit._revert_wrapper(p_role), p_role),
        pg_catalog.format('GRANT SELECT ON pg_temp.pgaudit_revert_plan TO %I', p_role)]
$$;

COMMENT ON FUNCTION audit._revert_wrapper_sql(text) IS
    'Internal. The statements that prepare a revert to write as the role p_role (a table''s owner): a temporary SECURITY DEFINER function it owns, which runs a statement, and its right to read the plan.';


CREATE OR REPLACE FUNCTION audit._revert_as_sql(p_role text, p_statement text, p_count boolean) RETURNS text
LANGUAGE sql STABLE AS $$
    -- p_statement as the revert runs it: itself (p_role null: as the reverter), or through the
    -- table owner's wrapper (audit._revert_wrapper_sql).
    SELECT CASE WHEN p_role IS NULL THEN p_statement
                ELSE pg_catalog.format('SELECT %s(%L::pg_catalog.text, %L::pg_catalog.bool)',
                                       audit._revert_wrapper(p_role), p_statement, p_count) END
$$;

COMMENT ON FUNCTION audit._revert_as_sql(text, text, boolean) IS
    'Internal. A statement of a revert as run by the role p_role through its wrapper (null: as is).';


CREATE OR REPLACE FUNCTION audit._revert_write_steps(p_tables regclass[], p_fire_triggers boolean)
RETURNS TABLE (kind text, table_name text, action text, statement text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
-- The steps of a revert script (audit.revert_script) that write, in order: the wrappers through
-- which tables are written as their owners (audit._revert_writer, audit._revert_wrapper_sql),
-- the application triggers switched off, the data statements, the deferred checks (each
-- table's as the role that wrote it: a constraint trigger is its owner's code; before the
-- triggers are switched back, since ALTER TABLE refuses a table with pending checks), the
-- triggers switched back, the wrappers dropped.
DECLARE
    v_writers text[] := ARRAY(SELECT DISTINCT audit._revert_writer(t) FROM pg_catalog.unnest(p_tables) AS t
                               WHERE audit._revert_writer(t) IS NOT NULL ORDER BY 1);
    r record;
BEGIN
    RETURN QUERY SELECT 'setup'::text, NULL::text, NULL::text, x.statement
                   FROM pg_catalog.unnest(v_writers) WITH ORDINALITY AS w(role, n),
                        pg_catalog.unnest(audit._revert_wrapper_sql(w.role)) WITH ORDINALITY AS x(statement, k)
                  ORDER BY w.n, x.k;
    -- The application's triggers stay off while the revert writes (unless told to fire them):
    -- the rows come back exactly as recorded. ALTER TABLE is transactional and locks each
    -- table against writers until COMMIT: nobody else ever sees them off, and an error or a
    -- killed session leaves them as they were.
    IF NOT p_fire_triggers THEN
        RETURN QUERY SELECT 'suppress'::text, t.table_name, t.trigger_name, t.suppress FROM audit.revert_triggers(p_tables) AS t;
    END IF;
    -- Children before parents for DELETE; parents before children for UPDATE and INSERT.
    FOR r IN
        SELECT a.action, o.relid::regclass AS rel, audit._revert_dml(o.relid::regclass, a.action) AS statement,
               audit._revert_writer(o.relid::regclass) AS writer
          FROM audit._revert_order(p_tables::oid[]) AS o,
               (VALUES (1, 'DELETE'), (2, 'UPDATE'), (3, 'INSERT')) AS a(n, action)
         ORDER BY a.n, CASE WHEN a.action = 'DELETE' THEN -o.depth ELSE o.depth END, audit._qualified(o.relid::regclass)
    LOOP
        CONTINUE WHEN r.statement IS NULL;
        RETURN QUERY SELECT r.action, audit._qualified(r.rel), r.action, audit._revert_as_sql(r.writer, r.statement, true);
    END LOOP;
    RETURN QUERY
        SELECT 'check'::text, NULL::text, NULL::text, audit._revert_as_sql(g.writer, g.statement, false)
          FROM (SELECT 1 AS k, w.writer, audit._revert_deferred(pg_catalog.array_agg(w.t), false) AS statement
                  FROM (SELECT t, audit._revert_writer(t) AS writer FROM pg_catalog.unnest(p_tables) AS t) AS w
                 GROUP BY w.writer
                 UNION ALL
                SELECT 2, NULL, audit._revert_deferred(p_tables, true)) AS g
         WHERE g.statement IS NOT NULL
         ORDER BY g.k, g.writer NULLS FIRST;
    IF NOT p_fire_triggers THEN
        RETURN QUERY SELECT 'restore'::text, t.table_name, t.trigger_name, t.restore FROM audit.revert_triggers(p_tables) AS t;
    END IF;
    RETURN QUERY SELECT 'cleanup'::text, NULL::text, NULL::text,
                        pg_catalog.format('DROP FUNCTION %s(pg_catalog.text, pg_catalog.bool)', audit._revert_wrapper(w.role))
                   FROM pg_catalog.unnest(v_writers) AS w(role);
END
$$;

COMMENT ON FUNCTION audit._revert_write_steps(regclass[], boolean) IS
    'Internal. The writing steps of a revert script, in order (kind: setup, suppress, DELETE/UPDATE/INSERT, check, restore, cleanup): see audit.revert_script.';


-- Revisions before the trigger switch had no p_fire_triggers.
DROP FUNCTION IF EXISTS audit.revert(jsonb, text, text);
DROP FUNCTION IF EXISTS audit.revert_script(jsonb, text, text);
DROP FUNCTION IF EXISTS audit._revert_deferred(regclass[]);

CREATE OR REPLACE FUNCTION audit.revert_script(
    p_selection jsonb,
    p_on_conflict text DEFAULT 'abort',
    p_actor text DEFAULT 'pgaudit-tool revert',
    p_fire_triggers boolean DEFAULT false
) RETURNS TABLE (step integer, kind text, table_name text, action text, statement text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    -- The table named as the caller's search_path finds it: the script runs with another.
    v_table regclass := pg_catalog.to_regclass(p_selection ->> 'table');
    v_ids bigint[] := audit.revert_selection(p_selection);
    v_tables regclass[];
    v_step integer := 0;
    v_count integer;
    r record;
BEGIN
    IF p_on_conflict IS NULL OR p_on_conflict NOT IN ('abort', 'skip', 'force') THEN
        RAISE EXCEPTION 'on_conflict is abort, skip or force, not %', coalesce(p_on_conflict, 'null')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_table IS NOT NULL THEN
        p_selection := pg_catalog.jsonb_set(p_selection, '{table}', pg_catalog.to_jsonb(audit._qualified(v_table)));
    END IF;
    v_tables := ARRAY(SELECT audit._revert_check_table(d.relid)
                        FROM (SELECT DISTINCT c.relid FROM pg_catalog.unnest(v_ids) AS s(id)
                                JOIN audit.change AS c ON c.id = s.id) AS d);
    IF NOT coalesce(p_fire_triggers, false) THEN
        PERFORM audit._revert_check_owner(v_tables);
    END IF;
    PERFORM audit._revert_writer(t) FROM pg_catalog.unnest(v_tables) AS t;   -- refuses before anything runs
    FOR r IN
        SELECT v.kind, v.statement FROM (VALUES
            (1, 'begin', 'BEGIN'),
            (2, 'setup', 'SET CONSTRAINTS ALL DEFERRED'),
            (3, 'setup', 'SET LOCAL jit = off'),
            -- Every statement names its tables and functions in full: operators (and functions)
            -- a table owner put on the reviewer's search_path must not be chosen.
            (4, 'setup', 'SET LOCAL search_path = pg_catalog, pg_temp'),
            -- Live tables are read and written: a row-level security policy (code of a
            -- table's owner) refuses the statement rather than run.
            (5, 'setup', 'SET LOCAL row_security = off'),
            (6, 'select', pg_catalog.format(
                E'CREATE TEMP TABLE pg_temp.pgaudit_revert_changes ON COMMIT DROP AS\n'
                 '    SELECT pg_catalog.unnest(audit.revert_selection(%L::jsonb)) AS id', p_selection)),
            (7, 'plan', pg_catalog.format(
                E'CREATE TEMP TABLE pg_temp.pgaudit_revert_plan ON COMMIT DROP AS\n'
                 '    SELECT * FROM audit.revert_plan(ARRAY(SELECT c.id FROM pg_temp.pgaudit_revert_changes AS c), %L)', p_on_conflict)),
            (8, 'plan', 'ANALYZE pg_temp.pgaudit_revert_plan (relid, action, apply, conflict)'),
            (9, 'guard', CASE WHEN p_on_conflict = 'abort' THEN
                E'SELECT audit._revert_refuse(pg_catalog.count(*),\n'
                 '       pg_catalog.array_agg(pg_catalog.format(''%s %s (%s)'', p.table_name, p.pk, p.reason) ORDER BY p.table_name, p.pk))\n'
                 '  FROM pg_temp.pgaudit_revert_plan AS p WHERE p.conflict' END),
            (10, 'label', pg_catalog.format(
                E'SELECT audit.set_actor(%L, audit._revert_context(%L::jsonb,\n'
                 '       ARRAY(SELECT c.id FROM pg_temp.pgaudit_revert_changes AS c)))', p_actor, p_selection))
        ) AS v(n, kind, statement)
        WHERE v.statement IS NOT NULL
        ORDER BY v.n
    LOOP
        v_step := v_step + 1;
        RETURN QUERY SELECT v_step, r.kind, NULL::text, NULL::text, r.statement;
    END LOOP;
    -- Grants, trigger switches, the data statements (each table as its writer), deferred checks.
    RETURN QUERY SELECT v_step + w.n::integer, w.kind, w.table_name, w.action, w.statement
                   FROM audit._revert_write_steps(v_tables, coalesce(p_fire_triggers, false))
                        WITH ORDINALITY AS w(kind, table_name, action, statement, n);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    v_step := v_step + v_count;
    RETURN QUERY SELECT v_step + 1, 'cleanup', NULL::text, NULL::text,
                        'DROP TABLE pg_temp.pgaudit_revert_plan, pg_temp.pgaudit_revert_changes'
                 UNION ALL SELECT v_step + 2, 'commit', NULL, NULL, 'COMMIT';
END
$$;

COMMENT ON FUNCTION audit.revert_script(jsonb, text, text, boolean) IS
    'The SQL statements of a revert, in order (kind: begin, setup, select, plan, guard, label, setup, suppress, DELETE/UPDATE/INSERT, check, restore, cleanup, commit): run one after the other they are the revert, in one transaction, recorded under the actor p_actor. p_on_conflict: abort (any conflicting row makes the revert fail and change nothing), skip (conflicting rows are left as they are) or force (overwritten). The application triggers of the tables written (audit.revert_triggers: table_name and action name each one) are switched off around the data statements (suppress) and back on after them (restore), so rows come back exactly as recorded; p_fire_triggers => true lets them fire instead. Suppressing needs ownership of the tables. Each table is written, and its deferred constraints checked, as the role audit._revert_writer gives (its owner when the caller may become it, through a temporary SECURITY DEFINER function the owner owns: audit._revert_wrapper_sql), so that code its owner wrote never runs with more rights than the owner has.';


CREATE OR REPLACE FUNCTION audit.revert(
    p_selection jsonb,
    p_on_conflict text DEFAULT 'abort',
    p_actor text DEFAULT 'pgaudit-tool revert',
    p_fire_triggers boolean DEFAULT false
) RETURNS TABLE (table_name text, action text, rows bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s record;
    v_rows bigint;
    -- The script pins search_path (SET LOCAL); the caller's is given back at the end.
    v_path text := pg_catalog.current_setting('search_path');
BEGIN
    FOR s IN SELECT * FROM audit.revert_script(p_selection, p_on_conflict, p_actor, p_fire_triggers) AS x ORDER BY x.step LOOP
        CONTINUE WHEN s.kind IN ('begin', 'commit');
        IF s.kind IN ('DELETE', 'UPDATE', 'INSERT') THEN
            EXECUTE s.statement INTO v_rows;
            IF v_rows > 0 THEN
                RETURN QUERY SELECT s.table_name, s.action, v_rows;
            END IF;
        ELSE
            EXECUTE s.statement;
        END IF;
    END LOOP;
    PERFORM pg_catalog.set_config('search_path', v_path, true);
END
$$;

COMMENT ON FUNCTION audit.revert(jsonb, text, text, boolean) IS
    'Reverts the changes a selection names (see audit.revert_selection) in the current transaction, recorded under the actor p_actor with the context {"revert": ...}; returns the rows deleted, updated and inserted per table. p_on_conflict: abort (default: any row changed later makes it fail and change nothing), skip or force. The tables'' application triggers do not fire (audit.revert_triggers), unless p_fire_triggers => true. SELECT * FROM audit.revert(''{"txids": [1234]}'');';
