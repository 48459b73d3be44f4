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

CREATE OR REPLACE FUNCTION audit._base_type(p_type oid) RETURNS oid
LANGUAGE plpgsql STABLE STRICT AS $$
-- The type itself, or for a domain the type it is based on (through domains over domains).
DECLARE
    v_type oid := p_type;
    v_base oid;
BEGIN
    LOOP
        SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype END INTO v_base FROM pg_catalog.pg_type AS t WHERE t.oid = v_type;
        EXIT WHEN v_base IS NULL;
        v_type := v_base;
    END LOOP;
    RETURN v_type;
END
$$;

COMMENT ON FUNCTION audit._base_type(oid) IS 'Internal. A type, or the base type of a domain.';


CREATE OR REPLACE FUNCTION audit._array_element(p_type oid) RETURNS oid
LANGUAGE sql STABLE STRICT AS $$
    -- The element type of an array type, else null.
    SELECT t.typelem FROM pg_catalog.pg_type AS t
     WHERE t.oid = p_type AND t.typelem <> 0 AND t.typsubscript = 'pg_catalog.array_subscript_handler'::regproc
$$;

COMMENT ON FUNCTION audit._array_element(oid) IS 'Internal. The element type of an array type (null for any other type).';


CREATE OR REPLACE FUNCTION audit._type_is_safe(p_type oid) RETURNS boolean
LANGUAGE plpgsql STABLE STRICT AS $$
-- Whether pg_catalog.to_jsonb may convert values of p_type with the audit owner's rights.
-- to_jsonb converts a value whose type is not built in, and is neither an array nor a composite,
-- through a cast to json when one exists; and whoever owns a type may create that cast (a
-- function of their own). Domains convert as their base type, arrays element by element,
-- composites field by field. So a type is safe when it is built in, or when every type it is
-- made of is owned by a superuser or the audit owner (no other role can create or replace a
-- cast from it, nor alter it).
DECLARE
    ty pg_catalog.pg_type;
BEGIN
    SELECT * INTO ty FROM pg_catalog.pg_type WHERE oid = audit._base_type(p_type);
    IF ty.oid < 16384 THEN            -- FirstNormalObjectId: built in
        RETURN true;
    END IF;
    IF audit._array_element(ty.oid) IS NOT NULL THEN
        RETURN audit._type_is_safe(audit._array_element(ty.oid));
    END IF;
    IF NOT audit._trusted_role(ty.typowner) THEN
        RETURN false;
    END IF;
    IF ty.typtype = 'c' THEN
        RETURN NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                            WHERE a.attrelid = ty.typrelid AND a.attnum > 0 AND NOT a.attisdropped
                              AND NOT audit._type_is_safe(a.atttypid));
    END IF;
    RETURN true;
END
$$;

COMMENT ON FUNCTION audit._type_is_safe(oid) IS
    'Internal. Whether to_jsonb can convert values of a type without running code a role other than a superuser or the audit owner wrote (a cast to json from a type it owns).';


CREATE OR REPLACE FUNCTION audit._time_text(p_at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    -- An instant in messages as the tool prints every time: ISO-8601, UTC, whatever the session.
    SELECT pg_catalog.to_char(pg_catalog.timezone('UTC', p_at), 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
$$;

COMMENT ON FUNCTION audit._time_text(timestamptz) IS
    'Internal. An instant as text for messages: ISO-8601 in UTC (2026-11-25T13:00:00.000000+00:00).';


CREATE OR REPLACE FUNCTION audit._trusted_role(p_role oid) RETURNS boolean
LANGUAGE plpgsql STABLE STRICT AS $$
BEGIN
    RETURN coalesce((SELECT r.rolsuper OR r.oid = audit._owner()::oid
                       FROM pg_catalog.pg_roles AS r WHERE r.oid = p_role), false);
END
$$;

COMMENT ON FUNCTION audit._trusted_role(oid) IS
    'Internal. Whether code a role writes may run with other roles'' rights: a superuser, or the audit owner.';


CREATE OR REPLACE FUNCTION audit._input_is_safe(p_type oid) RETURNS boolean
LANGUAGE plpgsql STABLE STRICT AS $$
-- Whether values of p_type can be read from text or JSON (jsonb_populate_record, a cast from
-- text) without running code that a role other than a superuser or the audit owner wrote, with
-- the rights of whoever reads: the CHECK constraints of a domain run on input, and whoever
-- owns the domain writes them (any function or operator in them, built in or not, runs with
-- the reader's rights). So a domain is safe without CHECK constraints, or when it and every
-- function and operator its constraints use belong to trusted roles; arrays, composites,
-- ranges and multiranges when the types they are made of are; built-in types, enums and base
-- types (only a superuser creates those) always.
DECLARE
    ty pg_catalog.pg_type;
BEGIN
    SELECT * INTO ty FROM pg_catalog.pg_type WHERE oid = p_type;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF ty.typtype = 'd' THEN
        IF EXISTS (SELECT FROM pg_catalog.pg_constraint AS c WHERE c.contypid = p_type AND c.contype = 'c')
           AND (NOT audit._trusted_role(ty.typowner) OR EXISTS (
                SELECT FROM pg_catalog.pg_constraint AS c
                  JOIN pg_catalog.pg_depend AS d
                    ON d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid = c.oid
                  LEFT JOIN pg_catalog.pg_proc AS p
                    ON d.refclassid = 'pg_catalog.pg_proc'::regclass AND p.oid = d.refobjid
                  LEFT JOIN pg_catalog.pg_operator AS o
                    ON d.refclassid = 'pg_catalog.pg_operator'::regclass AND o.oid = d.refobjid
                 WHERE c.contypid = p_type
                   AND (NOT audit._trusted_role(p.proowner) OR NOT audit._trusted_role(o.oprowner)))) THEN
            RETURN false;
        END IF;
        RETURN audit._input_is_safe(ty.typbasetype);
    END IF;
    IF ty.oid < 16384 THEN            -- FirstNormalObjectId: built in
        RETURN true;
    END IF;
    IF audit._array_element(ty.oid) IS NOT NULL THEN
        RETURN audit._input_is_safe(audit._array_element(ty.oid));
    END IF;
    IF ty.typtype = 'c' THEN
        RETURN NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                            WHERE a.attrelid = ty.typrelid AND a.attnum > 0 AND NOT a.attisdropped
                              AND NOT audit._input_is_safe(a.atttypid));
    END IF;
    IF ty.typtype = 'r' THEN
        RETURN audit._input_is_safe((SELECT r.rngsubtype FROM pg_catalog.pg_range AS r WHERE r.rngtypid = p_type));
    END IF;
    IF ty.typtype = 'm' THEN
        RETURN audit._input_is_safe((SELECT r.rngtypid FROM pg_catalog.pg_range AS r WHERE r.rngmultitypid = p_type));
    END IF;
    RETURN true;
END
$$;

COMMENT ON FUNCTION audit._input_is_safe(oid) IS
    'Internal. Whether values of a type can be read from text or JSON without running code (domain CHECK constraints) that a role other than a superuser or the audit owner wrote.';


CREATE OR REPLACE FUNCTION audit._read_type(p_table regclass, p_column text) RETURNS text
LANGUAGE plpgsql STABLE STRICT AS $$
-- The type to read a column's recorded values as, without running code of the table's owner:
-- a domain over a built-in type as that built-in type (its constraints are not checked: the
-- value is compared or shown, not stored), any other type as itself when that is safe
-- (audit._input_is_safe); otherwise an error naming the column and its type.
DECLARE
    a pg_catalog.pg_attribute;
    v_base oid;
BEGIN
    SELECT * INTO STRICT a FROM pg_catalog.pg_attribute
     WHERE attrelid = p_table AND attname = p_column AND attnum > 0 AND NOT attisdropped;
    v_base := audit._base_type(a.atttypid);
    IF v_base < 16384 THEN
        RETURN pg_catalog.format_type(v_base, CASE WHEN v_base = a.atttypid THEN a.atttypmod END);
    ELSIF audit._input_is_safe(a.atttypid) THEN
        RETURN pg_catalog.format_type(a.atttypid, a.atttypmod);
    END IF;
    RAISE EXCEPTION 'column % of % has type %, whose input runs code of its owner (the CHECK constraints of a domain); it is not run with your rights',
        pg_catalog.quote_ident(p_column), audit._qualified(p_table), pg_catalog.format_type(a.atttypid, NULL)
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Its recorded values are still in the JSON images (audit.history, audit.row_at).';
END
$$;

COMMENT ON FUNCTION audit._read_type(regclass, text) IS
    'Internal. The type to read a column''s recorded values as without running code of its owner: the built-in base type of a domain, or the column''s type when its input is safe; an error otherwise.';


CREATE OR REPLACE FUNCTION audit._keys_readable(p_table regclass, p_keys text[]) RETURNS boolean
LANGUAGE sql STABLE STRICT AS $$
    -- Whether audit._read_type reads every one of the columns (none of them would raise).
    SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                        WHERE a.attrelid = p_table AND a.attname::text = ANY (p_keys)
                          AND audit._base_type(a.atttypid) >= 16384 AND NOT audit._input_is_safe(a.atttypid))
$$;

COMMENT ON FUNCTION audit._keys_readable(regclass, text[]) IS
    'Internal. Whether the recorded values of the given columns can be read as their types without running code of the table''s owner (audit._read_type).';


CREATE OR REPLACE FUNCTION audit._read_value_sql(p_table regclass, p_column text, p_json text) RETURNS text
LANGUAGE sql STABLE STRICT AS $$
    -- SQL of the value of one column in the image p_json (an SQL expression), typed as
    -- audit._read_type gives, without running code of the table's owner.
    SELECT pg_catalog.format('(SELECT v.%1$I FROM pg_catalog.jsonb_to_record(%2$s) AS v(%1$I %3$s))',
                             p_column, p_json, audit._read_type(p_table, p_column))
$$;

COMMENT ON FUNCTION audit._read_value_sql(regclass, text, text) IS
    'Internal. SQL reading one column of a JSON image as its type without running code of the table''s owner (see audit._read_type).';


CREATE OR REPLACE FUNCTION audit._key_record_sql(p_table regclass, p_keys text[], p_json text, p_alias text)
RETURNS text
LANGUAGE sql STABLE STRICT AS $$
    -- A FROM item reading the key object p_json (an SQL expression) as the record p_alias of
    -- the key columns, each of the type audit._read_type gives: no domain constraint or other
    -- code of the table's owner runs (jsonb_populate_record into the table's row type would).
    SELECT pg_catalog.format('pg_catalog.jsonb_to_record(%s) AS %I(%s)', p_json, p_alias,
               pg_catalog.string_agg(pg_catalog.format('%I %s', k, audit._read_type(p_table, k)), ', ' ORDER BY n))
      FROM pg_catalog.unnest(p_keys) WITH ORDINALITY AS u(k, n)
$$;

COMMENT ON FUNCTION audit._key_record_sql(regclass, text[], text, text) IS
    'Internal. SQL FROM item reading a key object as a record of the key columns without running code of the table''s owner (see audit._read_type).';


CREATE OR REPLACE FUNCTION audit._value_sql(p_expr text, p_type oid) RETURNS text
LANGUAGE plpgsql STABLE STRICT AS $$
-- SQL of a value that jsonb_build_object or to_jsonb may convert safely: the expression itself
-- for a safe type (audit._type_is_safe); otherwise its text, produced by the type's output
-- function (format's %s never looks up a cast): a JSON string, as to_jsonb gives for such a type
-- when it has no cast to json; an array of scalars as an array of such strings; a composite (or
-- an array of composites) as its text, which jsonb_populate_record reads back.
DECLARE
    v_elem oid := audit._base_type(audit._array_element(audit._base_type(p_type)));
BEGIN
    IF audit._type_is_safe(p_type) THEN
        RETURN p_expr;
    ELSIF v_elem IS NOT NULL AND (SELECT t.typtype FROM pg_catalog.pg_type AS t WHERE t.oid = v_elem) <> 'c' THEN
        RETURN pg_catalog.format(
            'CASE WHEN pg_catalog.num_nulls(%1$s) = 0 THEN pg_catalog.format(''%%s'', %1$s)::text[] END', p_expr);
    END IF;
    RETURN pg_catalog.format('CASE WHEN pg_catalog.num_nulls(%1$s) = 0 THEN pg_catalog.format(''%%s'', %1$s) END', p_expr);
END
$$;

COMMENT ON FUNCTION audit._value_sql(text, oid) IS
    'Internal. SQL converting a value of a type for a JSON image without running code a table owner wrote: the value itself when to_jsonb is safe for its type, else its text from the type''s output function.';


CREATE OR REPLACE FUNCTION audit._columns_sql(p_alias text, p_relid oid, p_columns text[]) RETURNS text
LANGUAGE sql STABLE STRICT AS $$
    -- jsonb_build_object over the named columns (in attnum order), in blocks of 50 pairs joined
    -- by ||: a function takes at most 100 arguments.
    SELECT coalesce(pg_catalog.string_agg(b.sql, ' OPERATOR(pg_catalog.||) ' ORDER BY b.block), '''{}''::jsonb')
      FROM (SELECT (c.n - 1) / 50 AS block,
                   pg_catalog.concat('pg_catalog.jsonb_build_object(',
                       pg_catalog.string_agg(pg_catalog.format('%L, %s', c.name, c.value), ', ' ORDER BY c.n), ')') AS sql
              FROM (SELECT a.attname::text AS name,
                           audit._value_sql(pg_catalog.format('%s.%I', p_alias, a.attname), a.atttypid) AS value,
                           pg_catalog.row_number() OVER (ORDER BY a.attnum) AS n
                      FROM pg_catalog.pg_attribute AS a
                     WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped
                       AND a.attname::text = ANY (p_columns)) AS c
             GROUP BY 1) AS b
$$;

COMMENT ON FUNCTION audit._columns_sql(text, oid, text[]) IS
    'Internal. SQL expression building the JSON object {column: value} of the named columns of the row alias p_alias, converted by audit._value_sql.';


CREATE OR REPLACE FUNCTION audit._all_safe(p_relid oid) RETURNS boolean
LANGUAGE sql STABLE STRICT AS $$
    SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                        WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped
                          AND NOT audit._type_is_safe(a.atttypid))
$$;

COMMENT ON FUNCTION audit._all_safe(oid) IS
    'Internal. Whether to_jsonb of a whole row of the table is safe (audit._type_is_safe for every column).';


CREATE OR REPLACE FUNCTION audit._key_sql(p_alias text, p_keys text[], p_relid oid) RETURNS text
LANGUAGE sql STABLE STRICT AS $$
    SELECT audit._columns_sql(p_alias, p_relid, p_keys)
$$;

COMMENT ON FUNCTION audit._key_sql(text, text[], oid) IS
    'Internal. SQL expression building the JSON key object of the row alias p_alias.';


CREATE OR REPLACE FUNCTION audit._has_json(p_type oid) RETURNS boolean
LANGUAGE plpgsql STABLE STRICT AS $$
-- Whether values of p_type may hold a json value (json itself, a domain over it, an array or a
-- composite with one inside): jsonb cannot hold every json value (a \u0000 escape, a number
-- beyond numeric's range), so images of such columns are built by audit._jsonb_kept.
DECLARE
    v_type oid := audit._base_type(p_type);
    v_rel oid;
BEGIN
    IF v_type = 'pg_catalog.json'::pg_catalog.regtype THEN
        RETURN true;
    ELSIF audit._array_element(v_type) IS NOT NULL THEN
        RETURN audit._has_json(audit._array_element(v_type));
    END IF;
    SELECT t.typrelid INTO v_rel FROM pg_catalog.pg_type AS t WHERE t.oid = v_type AND t.typtype = 'c';
    RETURN v_rel IS NOT NULL AND EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                                          WHERE a.attrelid = v_rel AND a.attnum > 0 AND NOT a.attisdropped
                                            AND audit._has_json(a.atttypid));
END
$$;

COMMENT ON FUNCTION audit._has_json(oid) IS
    'Internal. Whether values of a type may contain a json value (json, a domain over it, an array or composite of such).';


CREATE OR REPLACE FUNCTION audit._kept_as_text_key() RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'pgaudit_tool: these columns hold json values that jsonb cannot hold, kept as their JSON text'::text
$$;

COMMENT ON FUNCTION audit._kept_as_text_key() IS
    'The key under which an image lists the columns whose json values jsonb cannot hold (a \u0000 escape, a number beyond numeric''s range): their values are the JSON text as a JSON string. Longer than any column name (63 bytes), so it is never a column. A transaction''s context that jsonb cannot hold is stored as {key: its text}.';


CREATE OR REPLACE FUNCTION audit._jsonb_kept(p_image jsonb, p_names text[], p_values json[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
-- The image p_image of a row's other columns with the json values p_values of the columns
-- p_names added. A json value that jsonb cannot hold (a \u0000 escape, a number beyond
-- numeric's range) must not make the audited write fail: it is kept as its JSON text (a JSON
-- string) and the image names such columns under audit._kept_as_text_key(), a key longer than
-- any column name. A value with no \u escape, no exponent of 5 digits and under 100 kB is
-- converted directly; only others pay for a subtransaction. Every operator is pg_catalog's:
-- this runs inside capture.
DECLARE
    v_image jsonb := p_image;
    v_kept text[] := '{}';
    v_text text;
BEGIN
    FOR i IN 1 .. pg_catalog.cardinality(p_names) LOOP
        v_text := p_values[i]::text;
        IF v_text IS NULL OR (pg_catalog.strpos(v_text, E'\\u') OPERATOR(pg_catalog.=) 0
                              AND pg_catalog.octet_length(v_text) OPERATOR(pg_catalog.<) 100000
                              AND v_text OPERATOR(pg_catalog.!~) '[eE][-+]?[0-9]{5}') THEN
            v_image := v_image OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(p_names[i], p_values[i]::jsonb);
            CONTINUE;
        END IF;
        BEGIN
            v_image := v_image OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(p_names[i], p_values[i]::jsonb);
        EXCEPTION WHEN untranslatable_character OR numeric_value_out_of_range OR invalid_text_representation THEN
            v_image := v_image OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(p_names[i], v_text);
            v_kept := v_kept OPERATOR(pg_catalog.||) p_names[i];
        END;
    END LOOP;
    IF pg_catalog.cardinality(v_kept) OPERATOR(pg_catalog.=) 0 THEN
        RETURN v_image;
    END IF;
    RETURN v_image OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(audit._kept_as_text_key(), v_kept);
END
$$;

COMMENT ON FUNCTION audit._jsonb_kept(jsonb, text[], json[]) IS
    'Internal. A row image with json values added, keeping as JSON text (and naming under audit._kept_as_text_key()) those jsonb cannot hold, so that capture never fails on them.';


CREATE OR REPLACE FUNCTION audit._image_sql(p_alias text, p_relid oid, p_excluded text[]) RETURNS text
LANGUAGE sql STABLE STRICT AS $$
    -- "alias.*", not "alias": a column named like the alias would be taken for the whole row.
    -- A row of safe types is converted whole; otherwise column by column (audit._value_sql).
    -- When columns may hold json values that jsonb cannot hold, a row whose json values show
    -- none of their marks (a \u escape, an exponent of 5 digits, 100 kB) is converted as above;
    -- any other goes through audit._jsonb_kept, which keeps such values as text.
    SELECT CASE WHEN pg_catalog.cardinality(j.names) = 0 THEN j.plain
                ELSE pg_catalog.format(
                    'CASE WHEN %s THEN %s ELSE audit._jsonb_kept(%s, %L::text[], ARRAY[%s]::pg_catalog.json[]) END',
                    (SELECT pg_catalog.string_agg(pg_catalog.format(
                                '(pg_catalog.strpos(%1$s.%2$I::text, E''\\u'') OPERATOR(pg_catalog.=) 0'
                                ' AND pg_catalog.octet_length(%1$s.%2$I::text) OPERATOR(pg_catalog.<) 100000'
                                ' AND %1$s.%2$I::text OPERATOR(pg_catalog.!~) ''[eE][-+]?[0-9]{5}'')', p_alias, c),
                            ' AND ') FROM pg_catalog.unnest(j.names) AS c),
                    j.plain, audit._columns_sql(p_alias, p_relid, j.others), j.names,
                    (SELECT pg_catalog.string_agg(pg_catalog.format('pg_catalog.to_json(%s.%I)', p_alias, c), ', ')
                       FROM pg_catalog.unnest(j.names) AS c))
           END
      FROM (SELECT n.names, n.others,
                   CASE WHEN NOT audit._all_safe(p_relid)
                        THEN audit._columns_sql(p_alias, p_relid, n.names OPERATOR(pg_catalog.||) n.others)
                        WHEN pg_catalog.cardinality(p_excluded) = 0
                        THEN pg_catalog.format('pg_catalog.to_jsonb(%s.*)', p_alias)
                        ELSE pg_catalog.format('(pg_catalog.to_jsonb(%s.*) OPERATOR(pg_catalog.-) %L::text[])',
                                               p_alias, p_excluded)
                   END AS plain
              FROM (SELECT ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                                  WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped
                                    AND a.attname::text <> ALL (p_excluded)
                                    AND audit._has_json(a.atttypid) AND audit._type_is_safe(a.atttypid)
                                  ORDER BY a.attnum) AS names,
                           ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                                  WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped
                                    AND a.attname::text <> ALL (p_excluded)
                                    AND NOT (audit._has_json(a.atttypid) AND audit._type_is_safe(a.atttypid))
                                  ORDER BY a.attnum) AS others) AS n) AS j
$$;

COMMENT ON FUNCTION audit._image_sql(text, oid, text[]) IS
    'Internal. SQL expression giving the JSONB image of the row alias p_alias of a table without the excluded columns, never running code a table owner wrote (see audit._type_is_safe).';


CREATE OR REPLACE FUNCTION audit._typed_keys(p_relid oid, p_keys text[]) RETURNS boolean
LANGUAGE sql STABLE STRICT AS $$
    -- Whether every key column is of a built-in type (or a domain over one): then its own =
    -- from pg_catalog is an exact match that no operator or cast a table owner creates can
    -- displace, and an index on the key serves comparisons.
    SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                        WHERE a.attrelid = p_relid AND a.attname::text = ANY (p_keys)
                          AND audit._base_type(a.atttypid) >= 16384)
$$;

COMMENT ON FUNCTION audit._typed_keys(oid, text[]) IS
    'Internal. Whether the key columns of a table are all of built-in types, so that they may be compared with pg_catalog''s own = operators.';


CREATE OR REPLACE FUNCTION audit._keys_equal_sql(p_left text, p_right text, p_keys text[], p_relid oid) RETURNS text
LANGUAGE sql STABLE STRICT AS $$
    -- SQL condition: the rows p_left and p_right (aliases of rows of the table) have the same key.
    -- Keys of built-in types are compared column by column with pg_catalog's =; other keys as
    -- their JSON form (audit._key_sql), so that no operator or cast of the table owner's runs.
    SELECT CASE WHEN audit._typed_keys(p_relid, p_keys)
                THEN (SELECT pg_catalog.string_agg(
                          pg_catalog.format('%s.%I OPERATOR(pg_catalog.=) %s.%I', p_left, k, p_right, k), ' AND ')
                        FROM pg_catalog.unnest(p_keys) AS k)
                ELSE pg_catalog.format('%s OPERATOR(pg_catalog.=) %s',
                                       audit._key_sql(p_left, p_keys, p_relid), audit._key_sql(p_right, p_keys, p_relid))
           END
$$;

COMMENT ON FUNCTION audit._keys_equal_sql(text, text, text[], oid) IS
    'Internal. SQL condition comparing the keys of two row aliases of a table, never with an operator or cast a table owner wrote.';


CREATE OR REPLACE FUNCTION audit._capture_sql(
    p_op text, p_relid oid, p_keys text[], p_excluded text[], p_dynamic boolean,
    p_source regclass DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql STABLE AS $$
-- The INSERT ... SELECT that logs one statement's rows. Values known once per statement are
-- plpgsql variables (v_txid, v_role, v_schema, v_table, v_clock) in the generated function, or
-- parameters $1..$5 when p_dynamic (EXECUTE ... USING, after a column rename or for TRUNCATE).
-- Every name is quoted (format %I, %L); no value is converted by code a table owner wrote.
DECLARE
    v_vals text;
    v_head text := 'INSERT INTO audit.change (txid, relid, schema_name, table_name, op, role, '
                   'statement_at, clock_at, pk, old, new) ';
BEGIN
    v_vals := CASE WHEN p_dynamic
        THEN pg_catalog.format('$1, %s::oid, $3, $4, %%L, $2, pg_catalog.statement_timestamp(), $5', p_relid)
        ELSE pg_catalog.format('v_txid, %s::oid, v_schema, v_table, %%L, v_role, pg_catalog.statement_timestamp(), v_clock', p_relid)
    END;
    IF p_op = 'INSERT' THEN
        RETURN v_head || pg_catalog.format('SELECT ' || v_vals || ', %s, NULL, %s FROM new_rows AS n',
            'I', audit._key_sql('n', p_keys, p_relid), audit._image_sql('n', p_relid, p_excluded));
    ELSIF p_op = 'DELETE' THEN
        RETURN v_head || pg_catalog.format('SELECT ' || v_vals || ', %s, %s, NULL FROM old_rows AS o',
            'D', audit._key_sql('o', p_keys, p_relid), audit._image_sql('o', p_relid, p_excluded));
    ELSIF p_op = 'TRUNCATE' THEN
        RETURN v_head || pg_catalog.format('SELECT ' || v_vals || ', %s, %s, NULL FROM ONLY %s AS o',
            'T', audit._key_sql('o', p_keys, p_relid), audit._image_sql('o', p_relid, p_excluded), p_source);
    ELSIF p_op <> 'UPDATE' THEN
        RAISE EXCEPTION 'unknown operation %', p_op USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- UPDATE: old and new rows are paired by key (audit._keys_equal_sql). A row whose key
    -- changed has no partner: it is logged under its old key with new = NULL and under its new
    -- key with old = NULL (a key column is never null in a real row; an image built column by
    -- column would otherwise be an object of nulls for the missing side).
    IF audit._typed_keys(p_relid, p_keys) THEN
        RETURN v_head || pg_catalog.format(
            'SELECT ' || v_vals || ', CASE WHEN n.%2$I IS NULL THEN %3$s ELSE %4$s END, '
            'CASE WHEN o.%2$I IS NOT NULL THEN %5$s END, CASE WHEN n.%2$I IS NOT NULL THEN %6$s END '
            'FROM old_rows AS o FULL JOIN new_rows AS n ON %7$s',
            'U', p_keys[1], audit._key_sql('o', p_keys, p_relid), audit._key_sql('n', p_keys, p_relid),
            audit._image_sql('o', p_relid, p_excluded), audit._image_sql('n', p_relid, p_excluded),
            audit._keys_equal_sql('o', 'n', p_keys, p_relid));
    END IF;
    -- Other keys: each side's key computed once, in a subquery, and compared as JSON.
    RETURN v_head || pg_catalog.format(
        'SELECT ' || v_vals || ', COALESCE(n.k, o.k), o.i, n.i '
        'FROM (SELECT %s AS k, %s AS i FROM old_rows AS o) AS o '
        'FULL JOIN (SELECT %s AS k, %s AS i FROM new_rows AS n) AS n ON o.k OPERATOR(pg_catalog.=) n.k',
        'U', audit._key_sql('o', p_keys, p_relid), audit._image_sql('o', p_relid, p_excluded),
        audit._key_sql('n', p_keys, p_relid), audit._image_sql('n', p_relid, p_excluded));
END
$$;

COMMENT ON FUNCTION audit._capture_sql(text, oid, text[], text[], boolean, regclass) IS
    'Internal. Text of the INSERT ... SELECT that logs the rows of one statement (INSERT, UPDATE, DELETE or TRUNCATE).';


CREATE OR REPLACE FUNCTION audit._current_columns(p_relid oid, p_attnums int2[]) RETURNS text[]
LANGUAGE sql STABLE STRICT AS $$
    SELECT coalesce(pg_catalog.array_agg(a.attname::text ORDER BY u.ord), '{}')
    FROM pg_catalog.unnest(p_attnums) WITH ORDINALITY AS u(attnum, ord)
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
    EXCEPTION WHEN untranslatable_character OR numeric_value_out_of_range THEN
        -- Valid JSON that jsonb cannot hold (a \u0000 escape, a huge number), perhaps from a
        -- request header: the write must not fail for it; the text is kept as it was set.
        RETURN pg_catalog.jsonb_build_object(audit._kept_as_text_key(), p_raw);
    WHEN invalid_text_representation THEN
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
    'Internal. The value of the setting pgaudit.context as JSONB; raises a clear error unless it is a JSON object. JSON that jsonb cannot hold (a \u0000 escape) is kept as its text under audit._kept_as_text_key().';


CREATE OR REPLACE FUNCTION audit._columns_now(p_relid oid, OUT attnums int2[], OUT columns text[], OUT types oid[])
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.array_agg(a.attnum ORDER BY a.attnum), pg_catalog.array_agg(a.attname::text ORDER BY a.attnum),
           pg_catalog.array_agg(a.atttypid ORDER BY a.attnum)
      FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped
$$;

COMMENT ON FUNCTION audit._columns_now(oid) IS
    'Internal. The attribute numbers, names and types of a table''s columns now, in order. (Generated capture functions that check the layout inline the same query.)';


CREATE OR REPLACE FUNCTION audit._excluded_now(p_relid oid, p_attnums int2[], p_names text[], p_known int2[])
RETURNS int2[]
LANGUAGE sql STABLE AS $$
    -- The columns of a table to leave out of images now: those excluded (p_attnums, renamed or
    -- not), any column that now bears a name an excluded column ever had (p_names: dropped and
    -- re-added, copied and renamed), and, on a table with excluded columns, every column added
    -- since the capture function was generated (not in p_known), until the exclusions are set
    -- again: a column added to receive a copy of a secret must not leak it.
    SELECT coalesce(pg_catalog.array_agg(a.attnum ORDER BY a.attnum), '{}')
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped
       AND (a.attnum = ANY (p_attnums) OR a.attname::text = ANY (p_names)
            OR (pg_catalog.cardinality(p_names) > 0 AND NOT a.attnum = ANY (p_known)))
$$;

COMMENT ON FUNCTION audit._excluded_now(oid, int2[], text[], int2[]) IS
    'Internal. Attribute numbers of the columns to exclude now: the excluded ones, any bearing a name an excluded column had, and on a table with exclusions any column added since the known layout.';


CREATE OR REPLACE FUNCTION audit._output_settings(p_relid oid, p_all boolean) RETURNS text[]
LANGUAGE sql STABLE STRICT AS $$
    -- The output settings that images and keys of the table's rows depend on, as name=value
    -- (the form of pg_proc.proconfig). to_jsonb writes numbers, booleans, strings, JSON, dates
    -- and timestamps without time zone in fixed forms; a timestamptz depends on TimeZone, an
    -- interval on IntervalStyle, a float on extra_float_digits, a bytea on bytea_output (also in
    -- arrays and domains). Any other type (ranges, composites, types of extensions or of the
    -- table owner, converted by their output functions) pins them all, and so does p_all.
    -- Each pinned setting costs the capture function's every call (its GUC save and restore).
    WITH types AS (
        SELECT coalesce(audit._base_type(audit._array_element(audit._base_type(a.atttypid))),
                        audit._base_type(a.atttypid)) AS typ
          FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid = p_relid AND a.attnum > 0 AND NOT a.attisdropped),
    pinned AS (
        SELECT p_all OR EXISTS (SELECT FROM types WHERE typ <> ALL ('{16,18,19,20,21,23,25,26,114,650,829,869,1042,1043,1082,1083,1114,1266,1700,2950,3802,1184,1186,700,701,17}'::oid[])) AS every)
    SELECT ARRAY(SELECT s.setting FROM pinned, (VALUES (1, 'TimeZone=UTC', '{1184}'::oid[]),
                                                    (2, 'DateStyle=ISO, YMD', '{}'::oid[]),
                                                    (3, 'IntervalStyle=postgres', '{1186}'::oid[]),
                                                    (4, 'extra_float_digits=1', '{700,701}'::oid[]),
                                                    (5, 'bytea_output=hex', '{17}'::oid[])) AS s(n, setting, needs)
                  WHERE pinned.every OR EXISTS (SELECT FROM types WHERE typ = ANY (s.needs))
                  ORDER BY s.n)
$$;

COMMENT ON FUNCTION audit._output_settings(oid, boolean) IS
    'Internal. The output settings (name=value) a capture function must pin so that the images of the table''s rows do not depend on the writer''s session: those its column types depend on, or all of them (p_all).';


CREATE OR REPLACE FUNCTION audit._capture_create_sql(p_name text, p_body text, p_settings text[]) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    -- Images and keys must not depend on the writer's session: the settings they depend on are
    -- pinned (audit._output_settings), and search_path always.
    SELECT pg_catalog.format(
        'CREATE OR REPLACE FUNCTION audit.%I() RETURNS trigger'
        ' LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp%s AS %L', p_name,
        (SELECT pg_catalog.string_agg(pg_catalog.format(' SET %I = %L', pg_catalog.split_part(s, '=', 1),
                                                        pg_catalog.substr(s, pg_catalog.strpos(s, '=') + 1)), '' ORDER BY n)
           FROM pg_catalog.unnest(p_settings) WITH ORDINALITY AS u(s, n)),
        p_body)
$$;

COMMENT ON FUNCTION audit._capture_create_sql(text, text, text[]) IS
    'Internal. The CREATE FUNCTION statement of a capture function from its name, body (a quoted literal) and pinned output settings (name=value, besides search_path).';


CREATE OR REPLACE FUNCTION audit._capture_check_sql(p_relid oid, p_layout_check boolean) RETURNS text
LANGUAGE plpgsql STABLE AS $gen$
-- The statements a capture function runs first: none; with p_layout_check, reading the column
-- layout and switching to the dynamic path when ALTER TABLE changed it; for a table that lost a
-- key column, an error (every write must fail, with a sentence saying why).
DECLARE
    t audit.tracked_table;
    v_attnums int2[];
    v_columns text[];
    v_types oid[];
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
        SELECT c.attnums, c.columns, c.types INTO v_attnums, v_columns, v_types FROM audit._columns_now(p_relid) AS c;
        v_check := pg_catalog.format($chk$
    -- The column layout now (one indexed catalog read). When ALTER TABLE changed it since this
    -- function was generated, the statement runs dynamically with the current key and excluded
    -- column names, and the new layout is recorded for reconstruction.
    SELECT pg_catalog.array_agg(a.attnum ORDER BY a.attnum), pg_catalog.array_agg(a.attname::text ORDER BY a.attnum),
           pg_catalog.array_agg(a.atttypid ORDER BY a.attnum)
      INTO v_attnums, v_columns, v_types
      FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = %1$s::oid AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_attnums IS DISTINCT FROM %5$L::int2[] OR v_columns IS DISTINCT FROM %6$L::text[]
       OR v_types IS DISTINCT FROM %7$L::oid[] THEN
        v_drift := true;
        v_keys := audit._current_columns(%1$s::oid, %3$L::int2[]);
        v_excluded := audit._current_columns(%1$s::oid, audit._excluded_now(%1$s::oid, %4$L::int2[], %2$L::text[], %5$L::int2[]));
        IF pg_catalog.array_position(v_keys, NULL) IS NOT NULL THEN
            RAISE EXCEPTION 'audited table %% lost a key column; capture cannot identify rows', %1$s::oid::regclass
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Restore the key, or run audit.disable() on the table.';
        END IF;
        PERFORM audit._record_layout(%1$s::oid, v_clock);
    END IF;$chk$,
            p_relid, t.excluded_names, t.key_attnums, t.excluded_attnums, v_attnums, v_columns, v_types);
    END IF;
    RETURN v_check;
END
$gen$;

COMMENT ON FUNCTION audit._capture_check_sql(oid, boolean) IS
    'Internal. The first statements of a generated capture function: the per-statement column layout check (p_layout_check), or the error of a table that lost a key column.';


CREATE OR REPLACE FUNCTION audit._capture_function_sql(p_relid oid, p_layout_check boolean) RETURNS text
LANGUAGE plpgsql STABLE AS $gen$
-- Generates the per-table capture trigger function from the registry row of p_relid and the
-- table's current column layout. p_layout_check: read the layout at every statement and run the
-- statement dynamically when ALTER TABLE changed it (without the guard, see audit._guarded).
-- Names never reach the text raw: identifiers are quoted (%I), names and lists are literals (%L),
-- and the body is itself a quoted literal (AS %L), so that no name can end a comment, a string
-- or the body. The text depends on the registry and the layout only (audit.doctor() compares).
DECLARE
    t audit.tracked_table;
    v_check text;
    v_body text;
BEGIN
    SELECT * INTO STRICT t FROM audit.tracked_table WHERE relid = p_relid;
    v_check := audit._capture_check_sql(p_relid, p_layout_check);
    v_body := pg_catalog.format($fn$#variable_conflict use_variable
-- Capture function generated by audit._capture_function_sql for the table of OID %1$s
-- (%5$s). Do not edit: audit.refresh() rewrites it. Columns are always qualified (n., o.):
-- a bare name is one of the variables below, even where a column bears the same name.
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
    v_types oid[];
    v_keys text[] := %2$L::text[];
    v_excluded text[] := %3$L::text[];
    v_drift boolean := false;
    v_rows bigint;
    v_rls text;
BEGIN%6$s
    IF v_txid IS NULL THEN
        -- Nothing changed, in this statement or before it in the transaction: nothing to log,
        -- and no transaction id (with its commit record) forced on a transaction that wrote nothing.
        RETURN NULL;
    END IF;
    IF TG_RELID <> %1$s::oid THEN
        -- A statement on a partition: log it under the audited partitioned table. A table that
        -- is no partition of it any more (detached) is not audited: nothing is logged (doctor
        -- reports the triggers left on it).
        SELECT n.nspname, c.relname INTO v_schema, v_table
          FROM pg_catalog.pg_partition_ancestors(TG_RELID) AS a
          JOIN pg_catalog.pg_class AS c ON c.oid = a.relid
          JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
         WHERE a.relid = %1$s::oid;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;

    IF TG_OP = 'TRUNCATE' THEN
        IF %4$L::boolean THEN
            -- The rows are read as the audit owner: with row_security off, a row-level security
            -- policy (code the table owner wrote) makes the read fail instead of running.
            v_rls := pg_catalog.current_setting('row_security');
            PERFORM pg_catalog.set_config('row_security', 'off', true);
            EXECUTE audit._capture_sql('TRUNCATE', %1$s::oid, v_keys, v_excluded, true, TG_RELID::regclass)
              USING v_txid, v_role, v_schema, v_table, v_clock;
            PERFORM pg_catalog.set_config('row_security', v_rls, true);
        ELSE
            INSERT INTO audit.change (txid, relid, schema_name, table_name, op, role, statement_at, clock_at)
            VALUES (v_txid, %1$s::oid, v_schema, v_table, 'T', v_role, pg_catalog.statement_timestamp(), v_clock);
        END IF;
    ELSIF v_drift THEN
        EXECUTE audit._capture_sql(TG_OP, %1$s::oid, v_keys, v_excluded, true)
          USING v_txid, v_role, v_schema, v_table, v_clock;
    ELSIF TG_OP = 'INSERT' THEN
        %7$s;
    ELSIF TG_OP = 'UPDATE' THEN
        %8$s;
    ELSE
        %9$s;
    END IF;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    IF v_rows > 0 THEN
        -- The transaction's context, recorded once, at its first audited change; its row arms
        -- the commit marker. A marker fired early (SET CONSTRAINTS ... IMMEDIATE) is re-armed.
        -- One statement, planned by nobody: ON CONFLICT probes the primary key itself, so no
        -- statistics of audit.transaction (stale after a quiet period or a restore) can turn it
        -- into a sequential scan.
        INSERT INTO audit.transaction AS x (txid, started_at, db_user, application_name, client_addr,
                                            client_port, backend_pid, actor, context)
        VALUES (v_txid, pg_catalog.now(), session_user,
                nullif(pg_catalog.current_setting('application_name'), ''),
                pg_catalog.inet_client_addr(), pg_catalog.inet_client_port(), pg_catalog.pg_backend_pid(),
                nullif(pg_catalog.current_setting('pgaudit.actor', true), ''),
                audit._context(nullif(pg_catalog.current_setting('pgaudit.context', true), '')))
        ON CONFLICT (txid, started_at) DO UPDATE SET committed_at = NULL WHERE x.committed_at IS NOT NULL;
    END IF;
    RETURN NULL;
END
$fn$,
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
    -- Every output setting when the layout may change under the function (the dynamic path
    -- then converts columns it was not generated for).
    RETURN audit._capture_create_sql(t.capture_function, v_body, audit._output_settings(p_relid, p_layout_check));
END
$gen$;

COMMENT ON FUNCTION audit._capture_function_sql(oid, boolean) IS
    'Internal. CREATE FUNCTION statement of the capture trigger function of an audited table, generated from its audit.tracked_table row; with or without the per-statement column layout check. Every name in it is quoted; the text depends on the registry row and the table''s columns only.';


CREATE OR REPLACE FUNCTION audit._record_break(p_relid oid, p_reason text) RETURNS void
LANGUAGE plpgsql AS $$
-- Records that the current transaction broke the history of an audited table (once per table
-- and transaction), and the transaction's record, whose commit time bounds the break.
BEGIN
    IF EXISTS (SELECT FROM audit.history_break AS b
                WHERE b.relid = p_relid AND b.txid = pg_catalog.pg_current_xact_id()) THEN
        RETURN;
    END IF;
    INSERT INTO audit.history_break (relid, reason) VALUES (p_relid, p_reason);
    -- The log's tables in capture's order (changes, then transactions), as maintain and retire
    -- lock them: this transaction may write changes after its transaction row.
    LOCK TABLE ONLY audit.change IN ROW EXCLUSIVE MODE;
    INSERT INTO audit.transaction (txid, started_at, db_user, application_name, client_addr,
                                   client_port, backend_pid, actor, context)
    VALUES (pg_catalog.pg_current_xact_id(), pg_catalog.now(), session_user,
            nullif(pg_catalog.current_setting('application_name'), ''),
            pg_catalog.inet_client_addr(), pg_catalog.inet_client_port(), pg_catalog.pg_backend_pid(),
            nullif(pg_catalog.current_setting('pgaudit.actor', true), ''), NULL)
    ON CONFLICT (txid, started_at) DO NOTHING;
END
$$;

COMMENT ON FUNCTION audit._record_break(oid, text) IS
    'Internal. Records a break in the history of an audited table (audit.history_break) made by the current transaction.';

REVOKE ALL ON FUNCTION audit._record_break(oid, text) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._record_layout(p_relid oid, p_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
-- Records the table's current column layout as valid from p_at, unless it is the latest known.
-- A column whose type changed since the latest layout breaks history: its older images may not
-- read back as the new type, and the change of type may have rewritten its values unlogged.
DECLARE
    v_attnums int2[];
    v_columns text[];
    v_types oid[];
    v_changed text;
    l audit.table_layout;
BEGIN
    SELECT c.attnums, c.columns, c.types INTO v_attnums, v_columns, v_types FROM audit._columns_now(p_relid) AS c;
    SELECT * INTO l FROM audit.table_layout WHERE relid = p_relid ORDER BY valid_from DESC LIMIT 1;
    IF l.attnums IS NOT DISTINCT FROM v_attnums AND l.columns IS NOT DISTINCT FROM v_columns
       AND l.types IS NOT DISTINCT FROM v_types THEN
        RETURN;
    END IF;
    IF l.types IS NOT NULL THEN
        SELECT pg_catalog.string_agg(pg_catalog.format('%I (%s to %s)', n.name, o.typid::regtype, n.typid::regtype), ', ')
          INTO v_changed
          FROM ROWS FROM (pg_catalog.unnest(l.attnums), pg_catalog.unnest(l.types)) AS o(attnum, typid)
          JOIN ROWS FROM (pg_catalog.unnest(v_attnums), pg_catalog.unnest(v_types), pg_catalog.unnest(v_columns)) AS n(attnum, typid, name) ON n.attnum = o.attnum
         WHERE n.typid <> o.typid;
        IF v_changed IS NOT NULL THEN
            PERFORM audit._record_break(p_relid, pg_catalog.format('the type of column %s changed', v_changed));
        END IF;
    END IF;
    INSERT INTO audit.table_layout (relid, valid_from, attnums, columns, types)
    VALUES (p_relid, p_at, v_attnums, v_columns, v_types)
    ON CONFLICT (relid, valid_from) DO UPDATE SET attnums = excluded.attnums, columns = excluded.columns, types = excluded.types;
END
$$;

COMMENT ON FUNCTION audit._record_layout(oid, timestamptz) IS
    'Internal. Records the current column layout of a table in audit.table_layout when it differs from the latest recorded one.';

REVOKE ALL ON FUNCTION audit._record_layout(oid, timestamptz) FROM PUBLIC;


-- The commit marker (audit._mark_commit_<partition>, one per partition of audit.transaction)
-- lives in 12_partition.sql: audit._partition_marker().
