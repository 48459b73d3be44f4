-- pgaudit_tool: moves (pg_dump and pg_restore into another database or cluster, pg_upgrade).
--   audit.reattach(dry_run)   re-attach the registry, the log and capture to the tables by name
--
-- Audited tables are identified by OID. pg_restore gives every table a new one, and an old OID
-- may then belong to another table; the generated capture functions compare TG_RELID with the
-- OID they were generated for, so capture of a moved table silently stops. audit.home says where
-- the schema was installed: when the database differs and registered tables are found by name
-- under other OIDs, the schema is "moved" (audit._moved()): doctor reports each table with the
-- fix audit.reattach(), and the DDL guard leaves the registry alone until then (its OIDs would
-- name the wrong tables). pg_upgrade keeps OIDs and transaction ids: nothing moves.
--
-- Transaction ids are never rewritten (the chain hashes them): a cluster whose transaction
-- counter is below the ids in the log (another cluster) must first be given a higher xid epoch
-- with pg_resetwal -e (audit._txid_problem); until then reattach refuses, doctor reports it.

CREATE OR REPLACE FUNCTION audit._home_now(OUT system_identifier bigint, OUT database_oid oid, OUT database_name text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    BEGIN
        SELECT s.system_identifier INTO system_identifier FROM pg_catalog.pg_control_system() AS s;
    EXCEPTION WHEN insufficient_privilege THEN
        system_identifier := NULL;
    END;
    SELECT d.oid, d.datname INTO database_oid, database_name
      FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database();
END
$$;

COMMENT ON FUNCTION audit._home_now() IS
    'Internal. The cluster''s system identifier (null when not readable) and the database''s OID and name: what audit.home records.';


CREATE OR REPLACE FUNCTION audit._home_text(p_home jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_home IS NULL THEN 'an unknown database (restored before revision 0008, or audit.home emptied)'
                ELSE pg_catalog.format('database %I (OID %s) of the cluster with system identifier %s',
                                       p_home OPERATOR(pg_catalog.->>) 'database_name',
                                       p_home OPERATOR(pg_catalog.->>) 'database_oid',
                                       coalesce(p_home OPERATOR(pg_catalog.->>) 'system_identifier', 'unknown')) END
$$;

COMMENT ON FUNCTION audit._home_text(jsonb) IS 'Internal. A home (audit.home row as JSON) for messages.';


CREATE OR REPLACE FUNCTION audit._home_changed() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
-- Whether the schema is not where audit.home says (no row: unknown, so changed).
DECLARE
    h audit.home;
    v_now record;
BEGIN
    SELECT * INTO h FROM audit.home;
    IF NOT FOUND THEN
        RETURN true;
    END IF;
    IF h.database_oid OPERATOR(pg_catalog.<>) (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database()) THEN
        RETURN true;
    END IF;
    v_now := audit._home_now();
    RETURN h.system_identifier IS NOT NULL AND v_now.system_identifier IS NOT NULL
           AND h.system_identifier OPERATOR(pg_catalog.<>) v_now.system_identifier;
END
$$;

COMMENT ON FUNCTION audit._home_changed() IS
    'Internal. Whether the database or cluster is not the one audit.home records (or audit.home is empty).';


CREATE OR REPLACE FUNCTION audit._relocations()
RETURNS TABLE (relid oid, schema_name text, table_name text, enabled boolean, capture_function text, found oid)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- Each registered table and the table of its registered name now (null: none).
    SELECT x.relid, x.schema_name, x.table_name, x.enabled, x.capture_function, c.oid
      FROM audit.tracked_table AS x
      LEFT JOIN pg_catalog.pg_class AS c
        ON c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.format('%I.%I', x.schema_name, x.table_name))::oid
       AND c.relkind IN ('r', 'p')
     ORDER BY x.schema_name, x.table_name, x.relid
$$;

COMMENT ON FUNCTION audit._relocations() IS
    'Internal. Every registered table with the OID of the table that bears its registered name now (null: none).';


CREATE OR REPLACE FUNCTION audit._moved() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- The schema was moved and not reattached yet: another database, and registered tables
    -- found by name under other OIDs.
    SELECT audit._home_changed()
       AND EXISTS (SELECT FROM audit._relocations() AS r WHERE r.found OPERATOR(pg_catalog.<>) r.relid)
$$;

COMMENT ON FUNCTION audit._moved() IS
    'Internal. Whether the audit schema was moved to another database (pg_restore) and not reattached yet: its OIDs would name the wrong tables (audit.reattach()).';


CREATE OR REPLACE FUNCTION audit._txid_problem(p_next xid8, OUT problem text, OUT hint text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
-- Whether transaction ids from p_next on (this cluster's next ones) could collide with those
-- recorded in the log, or fall into a sealed block: the log comes from another cluster whose
-- transaction counter was further. Null when they cannot.
DECLARE
    v_max xid8;
    v_sealed xid8;
    v_epoch numeric;
BEGIN
    v_max := GREATEST((SELECT x.txid FROM audit.transaction AS x ORDER BY x.txid DESC LIMIT 1),
                      (SELECT c.txid FROM audit.change AS c ORDER BY c.txid DESC LIMIT 1),
                      (SELECT j.txid FROM audit.journal AS j ORDER BY j.txid DESC LIMIT 1),
                      (SELECT b.txid FROM audit.history_break AS b ORDER BY b.txid DESC LIMIT 1));
    v_sealed := (SELECT s.txid_to FROM audit.seal AS s ORDER BY s.seq DESC LIMIT 1);
    IF (v_max IS NULL OR v_max OPERATOR(pg_catalog.<) p_next)
       AND (v_sealed IS NULL OR v_sealed OPERATOR(pg_catalog.<=) p_next) THEN
        RETURN;
    END IF;
    v_epoch := pg_catalog.floor(GREATEST(v_max, v_sealed)::text::numeric / 4294967296) + 1;
    problem := pg_catalog.format('the audit log records transaction ids up to %s, but this cluster''s next transaction id is %s (the log comes from another cluster): new audited transactions would be merged with recorded ones and land in sealed blocks',
                                 GREATEST(v_max, v_sealed), p_next);
    hint := pg_catalog.format('Transaction ids are never rewritten (the hash chain covers them). Stop this server, give its transaction ids a higher epoch with pg_resetwal -e %s -D <data directory> (the epoch is kept for external users of transaction ids such as this log), start it again, then run audit.reattach().', v_epoch);
END
$$;

COMMENT ON FUNCTION audit._txid_problem(xid8) IS
    'Internal. Why this cluster''s transaction ids from p_next on would collide with those in the audit log (a log from another cluster), with the pg_resetwal -e command that fixes it; null when they cannot.';


CREATE OR REPLACE FUNCTION audit._record_home() RETURNS void
LANGUAGE sql AS $$
    -- This database (and cluster) as the audit schema's home.
    INSERT INTO audit.home AS h (system_identifier, database_oid, database_name)
    SELECT n.system_identifier, n.database_oid, n.database_name FROM audit._home_now() AS n
    ON CONFLICT (singleton) DO UPDATE SET system_identifier = excluded.system_identifier,
        database_oid = excluded.database_oid, database_name = excluded.database_name,
        recorded_at = pg_catalog.now(), recorded_by = session_user
$$;

COMMENT ON FUNCTION audit._record_home() IS
    'Internal. Records this database and cluster in audit.home (reattach; the first enable in a copy).';


CREATE OR REPLACE FUNCTION audit._adopt_home() RETURNS void
LANGUAGE plpgsql AS $$
-- An audit schema with nothing registered has nothing to reattach: a database created from a
-- template holding one (CREATE DATABASE ... TEMPLATE) takes it over at its first enable.
BEGIN
    IF NOT EXISTS (SELECT FROM audit.tracked_table) AND audit._home_changed() THEN
        PERFORM audit._record_home();
    END IF;
END
$$;

COMMENT ON FUNCTION audit._adopt_home() IS
    'Internal. Called by audit.enable(): with nothing registered yet, records this database as the audit schema''s home (a copy of a database holding an empty audit schema).';


CREATE OR REPLACE FUNCTION audit._move_doctor() RETURNS TABLE (severity text, object text, problem text, fix text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
-- audit.doctor()'s checks of a move: transaction ids from another cluster, tables found by name
-- under other OIDs (capture stopped), a new home with nothing moved (pg_upgrade).
DECLARE
    x record;
    r record;
    v_home jsonb := (SELECT pg_catalog.to_jsonb(h) FROM audit.home AS h);
    v_from text;
    v_moved boolean := false;
BEGIN
    x := audit._txid_problem(pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot()));
    IF x.problem IS NOT NULL THEN
        severity := 'error'; object := 'transaction ids'; problem := x.problem || '. ' || x.hint; fix := NULL;
        RETURN NEXT;
    END IF;
    IF NOT audit._home_changed() THEN
        RETURN;
    END IF;
    v_from := audit._home_text(v_home);
    FOR r IN SELECT * FROM audit._relocations() AS l WHERE l.found <> l.relid LOOP
        v_moved := true;
        severity := 'error'; object := pg_catalog.format('%I.%I', r.schema_name, r.table_name);
        problem := pg_catalog.format('moved: the audit schema was recorded in %s, where this table had OID %s; here it has OID %s: %s',
            v_from, r.relid, r.found,
            CASE WHEN r.enabled THEN 'capture of it has stopped (its capture function looks for the old OID) and its history is not found'
                 ELSE 'its history is not found' END);
        fix := CASE WHEN x.problem IS NULL THEN 'SELECT * FROM audit.reattach()' END;
        RETURN NEXT;
    END LOOP;
    IF v_moved THEN
        FOR r IN SELECT * FROM audit._relocations() AS l WHERE l.found IS NULL LOOP
            severity := 'warning'; object := pg_catalog.format('%I.%I', r.schema_name, r.table_name);
            problem := pg_catalog.format('registered table not found by name in this database (OID %s where the audit schema was recorded): audit.reattach() keeps its history, readable with audit.history', r.relid);
            fix := NULL;
            RETURN NEXT;
        END LOOP;
    ELSIF EXISTS (SELECT FROM audit.tracked_table) THEN  -- a copy with nothing registered: nothing to say
        severity := 'info'; object := 'schema audit';
        problem := pg_catalog.format('recorded in %s; now in %s (pg_upgrade, or a copy): every table kept its OID, history and capture work',
                                     v_from, audit._home_text((SELECT pg_catalog.to_jsonb(n) FROM audit._home_now() AS n)));
        fix := CASE WHEN x.problem IS NULL THEN 'SELECT * FROM audit.reattach()' END;
        RETURN NEXT;
    END IF;
END
$$;

COMMENT ON FUNCTION audit._move_doctor() IS
    'Internal. The checks of audit.doctor() about a move: transaction ids of another cluster, tables found by name under other OIDs (audit.reattach() fixes it), a new home where nothing moved.';


CREATE OR REPLACE FUNCTION audit._remap_attnums(p_attnums int2[], p_from int2[], p_to int2[]) RETURNS int2[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY(SELECT coalesce(p_to[pg_catalog.array_position(p_from, u.a)], u.a)
                   FROM pg_catalog.unnest(p_attnums) WITH ORDINALITY AS u(a, k) ORDER BY u.k)
$$;

COMMENT ON FUNCTION audit._remap_attnums(int2[], int2[], int2[]) IS
    'Internal. Attribute numbers mapped from p_from to p_to (same positions); others kept.';


CREATE OR REPLACE FUNCTION audit._reattach_placeholder(p_relid oid, p_table text) RETURNS oid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
-- A placeholder table audit.relocated_<old OID>, owned by the audit owner, whose OID files the
-- history of a table not found by name after a move while its old OID is another table's now.
DECLARE
    v_name text := pg_catalog.format('relocated_%s', p_relid);
    v_oid oid;
BEGIN
    EXECUTE pg_catalog.format('CREATE TABLE audit.%I ()', v_name);
    EXECUTE pg_catalog.format('COMMENT ON TABLE audit.%I IS %L', v_name, pg_catalog.format(
        'Placeholder of audit.reattach(): its OID files the history of %s (OID %s before the move), not found by name after it. Keep it.',
        p_table, p_relid));
    v_oid := pg_catalog.to_regclass(pg_catalog.format('audit.%I', v_name))::oid;
    IF (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = v_oid) <> audit._owner()::oid THEN
        EXECUTE pg_catalog.format('ALTER TABLE audit.%I OWNER TO %s', v_name, audit._owner());
    END IF;
    RETURN v_oid;
END
$$;

COMMENT ON FUNCTION audit._reattach_placeholder(oid, text) IS
    'Internal. Creates the placeholder audit.relocated_<old OID> of audit.reattach() for a table not found by name whose old OID another table has now; returns its OID.';


CREATE OR REPLACE FUNCTION audit._reattach_attnums(p_relid oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
-- pg_restore does not keep dropped columns: the columns after one get other attribute
-- numbers. The recorded layouts and the registry follow them, matched by name in the
-- latest layout; an attribute number of a column dropped before is moved above the
-- highest possible one (1600), where no column of the table can ever be.
DECLARE
    l audit.table_layout;
    v_from_att int2[];
    v_to_att int2[];
BEGIN
    SELECT * INTO l FROM audit.table_layout AS y WHERE y.relid = p_relid ORDER BY y.valid_from DESC LIMIT 1;
    IF NOT FOUND OR NOT EXISTS (
        SELECT FROM ROWS FROM (pg_catalog.unnest(l.attnums), pg_catalog.unnest(l.columns)) AS o(attnum, name)
          LEFT JOIN pg_catalog.pg_attribute AS a
            ON a.attrelid = p_relid AND a.attname::text = o.name AND a.attnum > 0 AND NOT a.attisdropped
         WHERE a.attnum IS DISTINCT FROM o.attnum) THEN
        RETURN;
    END IF;
    SELECT pg_catalog.array_agg(o.attnum ORDER BY o.attnum),
           pg_catalog.array_agg(coalesce(a.attnum, (1600 + o.attnum)::int2) ORDER BY o.attnum)
      INTO v_from_att, v_to_att
      FROM (SELECT DISTINCT e.attnum FROM audit.table_layout AS y, pg_catalog.unnest(y.attnums) AS e(attnum)
             WHERE y.relid = p_relid) AS o
      LEFT JOIN ROWS FROM (pg_catalog.unnest(l.attnums), pg_catalog.unnest(l.columns)) AS k(attnum, name) ON k.attnum = o.attnum
      LEFT JOIN pg_catalog.pg_attribute AS a
        ON a.attrelid = p_relid AND a.attname::text = k.name AND a.attnum > 0 AND NOT a.attisdropped;
    UPDATE audit.table_layout AS y
       SET attnums = ARRAY(SELECT v_to_att[pg_catalog.array_position(v_from_att, u.a)]
                             FROM pg_catalog.unnest(y.attnums) WITH ORDINALITY AS u(a, k) ORDER BY u.k)
     WHERE y.relid = p_relid;
    UPDATE audit.tracked_table AS x
       SET key_attnums = audit._remap_attnums(x.key_attnums, v_from_att, v_to_att),
           excluded_attnums = audit._remap_attnums(x.excluded_attnums, v_from_att, v_to_att),
           held_attnums = audit._remap_attnums(x.held_attnums, v_from_att, v_to_att)
     WHERE x.relid = p_relid;
END
$$;

COMMENT ON FUNCTION audit._reattach_attnums(oid) IS
    'Internal. Part of audit.reattach(): the recorded layouts and registry of a restored table follow the attribute numbers pg_restore gave its columns (matched by name).';


CREATE OR REPLACE FUNCTION audit._reattach_types(p_relid oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
-- Types of the table's own making (enums, domains, composites) have new OIDs too: the
-- recorded layouts follow them, column by column of the latest layout (same attnum and
-- name), or the next layout recorded would see every such column change type.
DECLARE
    l audit.table_layout;
    v_told oid[];
    v_tnew oid[];
BEGIN
    SELECT * INTO l FROM audit.table_layout AS y WHERE y.relid = p_relid ORDER BY y.valid_from DESC LIMIT 1;
    IF NOT FOUND OR l.types IS NULL THEN
        RETURN;
    END IF;
    SELECT pg_catalog.array_agg(o.typ ORDER BY o.attnum), pg_catalog.array_agg(a.atttypid ORDER BY o.attnum)
      INTO v_told, v_tnew
      FROM ROWS FROM (pg_catalog.unnest(l.attnums), pg_catalog.unnest(l.types), pg_catalog.unnest(l.columns)) AS o(attnum, typ, name)
      JOIN pg_catalog.pg_attribute AS a ON a.attrelid = p_relid AND a.attnum = o.attnum AND a.attname::text = o.name
                                        AND NOT a.attisdropped
     WHERE o.typ >= 16384 AND a.atttypid <> o.typ;
    IF v_told IS NULL THEN
        RETURN;
    END IF;
    UPDATE audit.table_layout AS y
       SET types = ARRAY(SELECT coalesce(v_tnew[pg_catalog.array_position(v_told, u.t)], u.t)
                           FROM pg_catalog.unnest(y.types) WITH ORDINALITY AS u(t, k) ORDER BY u.k)
     WHERE y.relid = p_relid AND y.types && v_told;
END
$$;

COMMENT ON FUNCTION audit._reattach_types(oid) IS
    'Internal. Part of audit.reattach(): the recorded layouts of a restored table follow the new OIDs of the types of its own making.';


CREATE OR REPLACE FUNCTION audit._reattach_rewrite(p_old oid[], p_new oid[], p_enabled oid[], p_keep text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
-- audit.reattach()'s rewrite: records each move in audit.relocation, drops the old capture
-- functions (p_keep) and their triggers, files the registry, layouts, guards, history, breaks,
-- alerts and guard counters of each old OID (p_old) under its new one (p_new), marks tables not
-- found by name (not in p_enabled) as not captured, and follows attribute numbers and types
-- that pg_restore changed.
DECLARE
    v_old oid[] := p_old;
    v_new oid[] := p_new;
    v_enabled oid[] := p_enabled;
    v_keep text[] := p_keep;
    v_tmp oid[] := '{}';
    v_last bigint;
    v_from jsonb;
    v_anchor text;
    r record;
    i integer;
BEGIN
    v_last := coalesce((SELECT pg_catalog.max(c.id) FROM audit.change AS c), 0);
    v_from := (SELECT pg_catalog.to_jsonb(h) FROM audit.home AS h);
    INSERT INTO audit.relocation (old_relid, new_relid, schema_name, table_name, last_change, moved_from)
    SELECT u.o, u.n, x.schema_name, x.table_name, v_last, v_from
      FROM ROWS FROM (pg_catalog.unnest(v_old), pg_catalog.unnest(v_new)) AS u(o, n) JOIN audit.tracked_table AS x ON x.relid = u.o
     ORDER BY x.schema_name, x.table_name;

    -- The old capture functions and every trigger running them (their names may be the
    -- new names of others: all go before any is generated again).
    FOREACH v_anchor IN ARRAY v_keep LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION IF EXISTS audit.%I() CASCADE', v_anchor);
    END LOOP;

    -- Keys of the registry, layouts and guards go through temporary values (the top of
    -- the OID range), since a unique index is checked row by row.
    FOR i IN 1 .. pg_catalog.cardinality(v_old) LOOP
        v_tmp := v_tmp || (4294967295 - i)::oid;
    END LOOP;
    IF EXISTS (SELECT FROM audit.tracked_table AS x WHERE x.relid = ANY (v_tmp))
       OR EXISTS (SELECT FROM audit.guard AS x WHERE x.relid = ANY (v_tmp)) THEN
        RAISE EXCEPTION 'the registry uses OIDs at the top of the OID range; cannot reattach' USING ERRCODE = 'internal_error';
    END IF;
    UPDATE audit.tracked_table AS x SET relid = u.t FROM ROWS FROM (pg_catalog.unnest(v_old), pg_catalog.unnest(v_tmp)) AS u(o, t) WHERE x.relid = u.o;
    UPDATE audit.tracked_table AS x SET relid = u.n, capture_function = pg_catalog.format('capture_%s', u.n)
      FROM ROWS FROM (pg_catalog.unnest(v_tmp), pg_catalog.unnest(v_new)) AS u(t, n) WHERE x.relid = u.t;
    -- A table not found by name is not captured any more (its capture function is gone).
    UPDATE audit.tracked_table AS x SET enabled = false, disabled_at = pg_catalog.now()
      FROM pg_catalog.unnest(v_new) AS u(n)
     WHERE x.relid = u.n AND x.enabled AND NOT u.n = ANY (v_enabled);
    UPDATE audit.table_layout AS x SET relid = u.t FROM ROWS FROM (pg_catalog.unnest(v_old), pg_catalog.unnest(v_tmp)) AS u(o, t) WHERE x.relid = u.o;
    UPDATE audit.table_layout AS x SET relid = u.n FROM ROWS FROM (pg_catalog.unnest(v_tmp), pg_catalog.unnest(v_new)) AS u(t, n) WHERE x.relid = u.t;
    UPDATE audit.guard AS x SET relid = u.t FROM ROWS FROM (pg_catalog.unnest(v_old), pg_catalog.unnest(v_tmp)) AS u(o, t) WHERE x.relid = u.o;
    UPDATE audit.guard AS x SET relid = u.n FROM ROWS FROM (pg_catalog.unnest(v_tmp), pg_catalog.unnest(v_new)) AS u(t, n) WHERE x.relid = u.t;
    UPDATE audit.change AS x SET relid = u.n FROM ROWS FROM (pg_catalog.unnest(v_old), pg_catalog.unnest(v_new)) AS u(o, n) WHERE x.relid = u.o;
    UPDATE audit.history_break AS x SET relid = u.n FROM ROWS FROM (pg_catalog.unnest(v_old), pg_catalog.unnest(v_new)) AS u(o, n) WHERE x.relid = u.o;
    UPDATE audit.alert AS x SET relid = u.n FROM ROWS FROM (pg_catalog.unnest(v_old), pg_catalog.unnest(v_new)) AS u(o, n) WHERE x.relid = u.o;
    -- The guards' counters of refusals are named after the OID (two steps, likewise).
    FOR r IN SELECT u.o, u.n FROM ROWS FROM (pg_catalog.unnest(v_old), pg_catalog.unnest(v_new)) AS u(o, n)
              WHERE audit._guard_counter(u.o) IS NOT NULL LOOP
        EXECUTE pg_catalog.format('ALTER SEQUENCE audit.%I RENAME TO %I',
                                  pg_catalog.format('guard_blocked_%s', r.o), pg_catalog.format('guard_blocked_moving_%s', r.n));
    END LOOP;
    FOR r IN SELECT u.n FROM pg_catalog.unnest(v_new) AS u(n)
              WHERE pg_catalog.to_regclass(pg_catalog.format('audit.%I', pg_catalog.format('guard_blocked_moving_%s', u.n))) IS NOT NULL LOOP
        EXECUTE pg_catalog.format('ALTER SEQUENCE audit.%I RENAME TO %I',
                                  pg_catalog.format('guard_blocked_moving_%s', r.n), pg_catalog.format('guard_blocked_%s', r.n));
    END LOOP;

    FOR r IN SELECT u.n FROM pg_catalog.unnest(v_new) AS u(n)
              WHERE EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = u.n AND c.relkind IN ('r', 'p')) LOOP
        PERFORM audit._reattach_attnums(r.n);
        PERFORM audit._reattach_types(r.n);
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._reattach_rewrite(oid[], oid[], oid[], text[]) IS
    'Internal. The rewrite of audit.reattach(): every row filed under an old OID moved to its new one, in one transaction (see audit.reattach).';


CREATE OR REPLACE FUNCTION audit.reattach(p_dry_run boolean DEFAULT false)
RETURNS TABLE (table_name text, old_relid oid, new_relid oid, action text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
-- After pg_restore into another database (or cluster): finds each registered table by its
-- registered name and moves everything filed under its old OID to its new one, in one
-- transaction and one statement per table of the audit schema (a mapping: OIDs that trade
-- places are safe); regenerates the capture functions and triggers and the guards' triggers;
-- records each move in audit.relocation (journaled, sealed) and the new home.
DECLARE
    v_old oid[] := '{}';
    v_new oid[] := '{}';
    v_enabled oid[] := '{}';
    v_keep text[] := '{}';
    v_anchor_oid oid;
    v_xid record;
    r record;
    g record;
    m regclass;
BEGIN
    IF NOT audit._is_owner() THEN
        RAISE EXCEPTION 'only the owner of the audit schema (%) or a superuser may reattach it', audit._owner()
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT p_dry_run THEN
        -- No enable, disable, guard or seal meanwhile (capture and reading go on).
        LOCK TABLE audit.tracked_table, audit.table_layout, audit.guard IN EXCLUSIVE MODE;
        LOCK TABLE audit.seal IN SHARE ROW EXCLUSIVE MODE;
    END IF;
    v_xid := audit._txid_problem(pg_catalog.pg_current_xact_id());
    IF v_xid.problem IS NOT NULL THEN
        RAISE EXCEPTION '%', v_xid.problem USING ERRCODE = 'object_not_in_prerequisite_state', HINT = v_xid.hint;
    END IF;

    FOR r IN SELECT * FROM audit._relocations() LOOP
        table_name := pg_catalog.format('%I.%I', r.schema_name, r.table_name);
        old_relid := r.relid;
        IF r.found = r.relid THEN
            new_relid := r.relid; action := 'unchanged';
        ELSIF r.found IS NOT NULL THEN
            new_relid := r.found; action := 'moved';
        ELSIF EXISTS (SELECT FROM pg_catalog.pg_class AS c
                       WHERE c.oid = r.relid AND c.relnamespace = 'audit'::regnamespace) THEN
            new_relid := r.relid; action := 'missing: history kept under a placeholder';   -- placed before
        ELSIF EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = r.relid)
              OR EXISTS (SELECT FROM audit._relocations() AS o WHERE o.found = r.relid) THEN
            -- Not found by name, and its OID is another table's now: its history is filed under
            -- a placeholder's OID, which no table can take while the placeholder exists.
            new_relid := NULL; action := 'missing: history kept under a placeholder';
            IF NOT p_dry_run THEN
                new_relid := audit._reattach_placeholder(r.relid, table_name);
            END IF;
        ELSE
            new_relid := r.relid; action := 'missing: history kept under its OID';
        END IF;
        IF new_relid IS DISTINCT FROM old_relid AND new_relid IS NOT NULL THEN
            v_old := v_old || old_relid;
            v_new := v_new || new_relid;
            IF r.enabled AND r.found IS NOT NULL THEN
                v_enabled := v_enabled || new_relid;
            END IF;
            IF r.capture_function IS NOT NULL THEN
                v_keep := v_keep || r.capture_function;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF p_dry_run THEN
        RETURN;
    END IF;

    IF pg_catalog.cardinality(v_old) > 0 THEN
        PERFORM audit._reattach_rewrite(v_old, v_new, v_enabled, v_keep);
    END IF;

    -- The new home: from here on the registry names the right tables, and the DDL guard,
    -- fired by the statements below, follows them again.
    PERFORM audit._record_home();

    FOREACH v_anchor_oid IN ARRAY v_enabled LOOP
        PERFORM audit.enable(v_anchor_oid::regclass);
    END LOOP;
    FOR g IN SELECT x.* FROM audit.guard AS x WHERE x.relid = ANY (v_new)
                AND EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = x.relid AND c.relkind IN ('r', 'p')) LOOP
        FOR m IN SELECT audit._members(g.relid::regclass) LOOP
            PERFORM audit._create_guard_member_triggers(m, g.relid, g.max_rows, g.ops);
        END LOOP;
    END LOOP;
    RETURN;
END
$$;

COMMENT ON FUNCTION audit.reattach(boolean) IS
    'After pg_dump and pg_restore into another database or cluster: finds every registered table by its registered name and files its registry row, layouts, history, history breaks, guard and alerts under its OID here, in one transaction (OIDs that trade places are safe); regenerates capture and guard triggers; records each move in audit.relocation (covered by the hash chain, which keeps hashing the OIDs as captured) and the new home in audit.home. A table not found by name keeps its history, under its old OID or, when another table has that OID now, under a placeholder''s (audit.relocated_<old OID>). Refuses a log whose transaction ids this cluster has not reached yet (see the hint: pg_resetwal -e). p_dry_run: only report what would be done. Returns one row per registered table: moved, unchanged or missing. Only the audit owner (or a superuser) may run it.';
