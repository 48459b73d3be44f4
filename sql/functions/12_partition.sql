-- pgaudit_tool: the partitioned log (schema revision 0009).
--
-- audit.change and audit.transaction are range-partitioned by started_at, the start of the
-- writing transaction, with the same ranges, so a transaction's record and its changes are
-- always in partitions of the same name suffix: audit.change_p<start> and
-- audit.transaction_p<start>, <start> being the lower bound in UTC (YYYYMMDD_HHMMSS). Rows whose
-- start no range covers land in the default partitions (audit.change_default,
-- audit.transaction_default): a write never fails for want of a partition.
--
-- audit.maintain() (pgaudit-tool maintain, for cron) seals the log and keeps partitions
-- audit.partitioning.ahead intervals ahead of now; rows found in the default partitions get a
-- partition of their own range. Bounds are aligned: whole-month intervals on months counted
-- from January 2000, others on multiples of the interval from Monday 3 January 2000, in UTC.
--
-- Partitions are created as plain tables and then attached: ATTACH PARTITION takes a SHARE
-- UPDATE EXCLUSIVE lock on the log, which audited writes do not wait for (CREATE TABLE ...
-- PARTITION OF would take an ACCESS EXCLUSIVE one). Dropping a partition (archive --drop,
-- retention) needs ACCESS EXCLUSIVE for a moment.

CREATE OR REPLACE FUNCTION audit._partition_floor(p_at timestamptz, p_interval interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT AS $$
-- Start of the aligned interval that holds p_at.
    SELECT CASE WHEN pg_catalog.date_trunc('month', p_interval) = interval '0'
        THEN pg_catalog.date_bin(p_interval, p_at, timestamptz '2000-01-03 00:00:00+00')
        ELSE (timestamp '2000-01-01 00:00:00'
              + pg_catalog.make_interval(months => (pg_catalog.floor(m.since / m.step) * m.step)::integer))
             AT TIME ZONE 'UTC'
    END
      FROM (SELECT (pg_catalog.date_part('year', p_at AT TIME ZONE 'UTC') - 2000) * 12
                   + pg_catalog.date_part('month', p_at AT TIME ZONE 'UTC') - 1 AS since,
                   pg_catalog.date_part('year', p_interval) * 12 + pg_catalog.date_part('month', p_interval) AS step) AS m
$$;

COMMENT ON FUNCTION audit._partition_floor(timestamptz, interval) IS
    'Internal. Start of the partition range of the given interval that holds an instant (aligned in UTC: months from January 2000, other intervals from Monday 3 January 2000).';


CREATE OR REPLACE FUNCTION audit._partition_next(p_at timestamptz, p_interval interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT AS $$
-- The aligned boundary after p_at: calendar arithmetic in UTC, whatever the session's zone.
    SELECT ((audit._partition_floor(p_at, p_interval) AT TIME ZONE 'UTC') + p_interval) AT TIME ZONE 'UTC'
$$;

COMMENT ON FUNCTION audit._partition_next(timestamptz, interval) IS
    'Internal. The first aligned partition boundary after an instant.';


CREATE OR REPLACE FUNCTION audit.partitions()
RETURNS TABLE (log text, partition regclass, lower timestamptz, upper timestamptz, estimated_rows bigint)
LANGUAGE sql STABLE AS $$
    SELECT p.relname, c.oid::regclass,
           CASE WHEN b.f IS NULL THEN NULL WHEN b.f = 'MINVALUE' THEN '-infinity' ELSE pg_catalog.btrim(b.f, '''')::timestamptz END,
           CASE WHEN b.t IS NULL THEN NULL WHEN b.t = 'MAXVALUE' THEN 'infinity' ELSE pg_catalog.btrim(b.t, '''')::timestamptz END,
           CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END
      FROM pg_catalog.pg_class AS p
      JOIN pg_catalog.pg_inherits AS i ON i.inhparent = p.oid
      JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
      LEFT JOIN LATERAL (SELECT m[1] AS f, m[2] AS t
                           FROM pg_catalog.regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                                                        '^FOR VALUES FROM \((.*)\) TO \((.*)\)$') AS m) AS b ON true
     WHERE p.relnamespace = 'audit'::regnamespace AND p.relname IN ('change', 'transaction')
     ORDER BY p.relname, 3 NULLS LAST
$$;

COMMENT ON FUNCTION audit.partitions() IS
    'The partitions of the log: for each of audit.change and audit.transaction (log), every partition with its range [lower, upper) of transaction start times (null for the default partition) and the planner''s row estimate (null before the first ANALYZE).';


CREATE OR REPLACE FUNCTION audit._partition_marker(p_partition regclass) RETURNS boolean
LANGUAGE plpgsql AS $fn$
-- The commit marker of one partition of audit.transaction: a deferred constraint trigger
-- (ENABLE ALWAYS) whose function stamps committed_at at COMMIT by a static UPDATE of that
-- partition. One function per partition: an UPDATE through the partitioned table costs about
-- 100 µs more per transaction (executor set-up for rows that could move between partitions),
-- and EXECUTE as much in planning. Returns whether anything was created or re-enabled.
DECLARE
    v_name text := (SELECT c.relname FROM pg_catalog.pg_class AS c WHERE c.oid = p_partition);
    v_function text := '_mark_commit_' || pg_catalog.substr(v_name, pg_catalog.length('transaction_') + 1);
    v_owner regrole := (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = 'audit.transaction'::regclass);
    v_trigger "char";
BEGIN
    SELECT g.tgenabled INTO v_trigger FROM pg_catalog.pg_trigger AS g
     WHERE g.tgrelid = p_partition AND g.tgname = 'mark_commit';
    IF v_trigger = 'A' AND pg_catalog.to_regprocedure(pg_catalog.format('audit.%I()', v_function)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE pg_catalog.format($f$
CREATE OR REPLACE FUNCTION audit.%1$I() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET enable_seqscan = off AS $b$
-- Deferred to COMMIT: stamps the transaction with the clock time of its commit. Every name is
-- qualified (no search_path to pin); enable_seqscan = off keeps the lookup by key an index scan
-- whatever the statistics of the partition say when the session first plans it.
BEGIN
    UPDATE %2$s SET committed_at = pg_catalog.clock_timestamp()
     WHERE txid OPERATOR(pg_catalog.=) NEW.txid AND started_at OPERATOR(pg_catalog.=) NEW.started_at;
    RETURN NULL;
END
$b$$f$, v_function, p_partition);
    EXECUTE pg_catalog.format('ALTER FUNCTION audit.%I() OWNER TO %I', v_function, v_owner);
    EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION audit.%I() FROM PUBLIC', v_function);
    EXECUTE pg_catalog.format('COMMENT ON FUNCTION audit.%I() IS %L', v_function,
        pg_catalog.format('Internal. Commit marker of %s: deferred constraint trigger function writing committed_at at COMMIT.', p_partition));
    IF v_trigger IS NULL THEN
        EXECUTE pg_catalog.format('CREATE CONSTRAINT TRIGGER mark_commit AFTER INSERT OR UPDATE ON %s'
                                  ' DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.committed_at IS NULL)'
                                  ' EXECUTE FUNCTION audit.%I()', p_partition, v_function);
    END IF;
    IF v_trigger IS DISTINCT FROM 'A' THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER mark_commit', p_partition);
    END IF;
    RETURN true;
END
$fn$;

COMMENT ON FUNCTION audit._partition_marker(regclass) IS
    'Internal. Creates (or re-enables) the commit marker of a partition of audit.transaction: its own deferred constraint trigger mark_commit, ENABLE ALWAYS, and function audit._mark_commit_<suffix>.';

REVOKE ALL ON FUNCTION audit._partition_marker(regclass) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._partition_suffix(p_from timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.to_char(p_from AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MISS')
$$;

COMMENT ON FUNCTION audit._partition_suffix(timestamptz) IS
    'Internal. The suffix of the partition pair whose range starts at p_from: its lower bound in UTC, YYYYMMDD_HHMMSS.';


CREATE OR REPLACE FUNCTION audit._partition_name(p_log text, p_from timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.format('%s_p%s', p_log, audit._partition_suffix(p_from))
$$;

COMMENT ON FUNCTION audit._partition_name(text, timestamptz) IS
    'Internal. The name of the partition of audit.change or audit.transaction (p_log) whose range starts at p_from.';


CREATE OR REPLACE FUNCTION audit._partition_move(p_log text, p_name text, p_from timestamptz, p_to timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
-- Moves the rows of [p_from, p_to) from the default partition of a log table to the table
-- p_name (a partition to be); returns how many.
DECLARE
    v_rows bigint;
BEGIN
    EXECUTE pg_catalog.format(
        'WITH m AS (DELETE FROM audit.%I WHERE started_at >= $1 AND started_at < $2 RETURNING *)'
        ' INSERT INTO audit.%I SELECT * FROM m', p_log || '_default', p_name) USING p_from, p_to;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;

COMMENT ON FUNCTION audit._partition_move(text, text, timestamptz, timestamptz) IS
    'Internal. Moves the rows of a range of transaction start times from the default partition of audit.change or audit.transaction to the given table.';

REVOKE ALL ON FUNCTION audit._partition_move(text, text, timestamptz, timestamptz) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._partition_add(p_from timestamptz, p_to timestamptz, p_marker boolean DEFAULT true)
RETURNS bigint
LANGUAGE plpgsql AS $$
-- Creates the partitions [p_from, p_to) of both log tables, moving into them the rows of that
-- range that the default partitions hold, owned by the log's owner, and the commit marker of
-- the transaction partition (unless p_marker is false). Returns the rows moved.
--
-- A range that has begun (p_from <= now()) may be written to while this runs: writers put its
-- rows in the default partitions until the new ones are attached, and ATTACH fails if the
-- default holds a row of the range. So the rows found are moved first, without blocking anyone;
-- then writes to the log stop (EXCLUSIVE: reads go on; in the order capture takes these locks),
-- the rows written meanwhile follow, and the partitions are attached. A writer that waited
-- then routes its rows with the new partitions.
DECLARE
    v_log text;
    v_name text;
    v_owner regrole;
    v_moved bigint := 0;
    v_logs text[] := ARRAY['transaction', 'change'];
BEGIN
    FOREACH v_log IN ARRAY v_logs LOOP
        v_name := audit._partition_name(v_log, p_from);
        SELECT c.relowner INTO v_owner FROM pg_catalog.pg_class AS c
         WHERE c.oid = pg_catalog.format('audit.%I', v_log)::regclass;
        EXECUTE pg_catalog.format('CREATE TABLE audit.%I (LIKE audit.%I INCLUDING DEFAULTS)', v_name, v_log);
        EXECUTE pg_catalog.format('ALTER TABLE audit.%I OWNER TO %I', v_name, v_owner);
        -- Readers read the log through its parents; doctor and archivable() read partitions.
        IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgaudit_reader') THEN
            EXECUTE pg_catalog.format('GRANT SELECT ON audit.%I TO pgaudit_reader', v_name);
        END IF;
        v_moved := v_moved + audit._partition_move(v_log, v_name, p_from, p_to);
    END LOOP;
    IF p_from <= pg_catalog.now() THEN
        LOCK TABLE audit.change, audit.transaction IN EXCLUSIVE MODE;
        FOREACH v_log IN ARRAY v_logs LOOP
            v_moved := v_moved + audit._partition_move(v_log, audit._partition_name(v_log, p_from), p_from, p_to);
        END LOOP;
    END IF;
    FOREACH v_log IN ARRAY v_logs LOOP
        v_name := audit._partition_name(v_log, p_from);
        EXECUTE pg_catalog.format('ALTER TABLE audit.%I ATTACH PARTITION audit.%I FOR VALUES FROM (%L) TO (%L)',
                                  v_log, v_name, p_from, p_to);
        EXECUTE pg_catalog.format('COMMENT ON TABLE audit.%I IS %L', v_name,
            pg_catalog.format('Partition of audit.%s: rows of the transactions started from %s to %s (UTC, upper bound excluded).',
                              v_log, p_from AT TIME ZONE 'UTC', p_to AT TIME ZONE 'UTC'));
        IF v_log = 'transaction' AND p_marker THEN
            PERFORM audit._partition_marker(pg_catalog.format('audit.%I', v_name)::regclass);
        END IF;
    END LOOP;
    RETURN v_moved;
END
$$;

COMMENT ON FUNCTION audit._partition_add(timestamptz, timestamptz, boolean) IS
    'Internal. Creates the partitions of audit.change and audit.transaction for a range of transaction start times (plain tables, then ATTACH PARTITION, which audited writes do not wait for), moving into them the rows of the default partitions in that range.';

REVOKE ALL ON FUNCTION audit._partition_add(timestamptz, timestamptz, boolean) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._partition_holes()
RETURNS TABLE (lower timestamptz, upper timestamptz)
LANGUAGE sql STABLE AS $$
-- The ranges of start times no range partition covers (the default partitions take them).
    WITH r AS (SELECT p.lower, p.upper FROM audit.partitions() AS p WHERE p.log = 'change' AND p.lower IS NOT NULL),
         e AS (SELECT r.upper AS lower, coalesce(pg_catalog.lead(r.lower) OVER (ORDER BY r.lower), 'infinity') AS upper FROM r
               UNION ALL
               SELECT '-infinity', coalesce((SELECT pg_catalog.min(r.lower) FROM r), 'infinity'))
    SELECT e.lower, e.upper FROM e WHERE e.lower < e.upper ORDER BY 1
$$;

COMMENT ON FUNCTION audit._partition_holes() IS
    'Internal. Ranges of transaction start times that no range partition of the log covers.';


CREATE OR REPLACE FUNCTION audit._partition_ahead()
RETURNS TABLE (partition text, lower timestamptz, upper timestamptz, moved bigint)
LANGUAGE plpgsql AS $$
-- Gives the rows of the default partitions partitions of their own (one per range between
-- existing partitions that holds some), then creates partitions from the newest one (or from
-- the current interval, after a pause or at install) until audit.partitioning.ahead intervals
-- after now.
DECLARE
    v_step interval;
    v_ahead integer;
    v_start timestamptz;
    v_end timestamptz;
    h record;
    v_min timestamptz;
    v_max timestamptz;
BEGIN
    SELECT s.partition_interval, s.ahead INTO v_step, v_ahead FROM audit.partitioning AS s;
    FOR h IN SELECT * FROM audit._partition_holes() LOOP
        SELECT pg_catalog.min(d.started_at), pg_catalog.max(d.started_at) INTO v_min, v_max
          FROM (SELECT x.started_at FROM audit.transaction_default AS x
                 WHERE x.started_at >= h.lower AND x.started_at < h.upper
                UNION ALL
                SELECT c.started_at FROM audit.change_default AS c
                 WHERE c.started_at >= h.lower AND c.started_at < h.upper) AS d;
        CONTINUE WHEN v_min IS NULL;
        lower := GREATEST(h.lower, audit._partition_floor(v_min, v_step));
        upper := LEAST(h.upper, audit._partition_next(v_max, v_step));
        partition := audit._partition_suffix(lower);
        moved := audit._partition_add(lower, upper);
        RETURN NEXT;
    END LOOP;
    v_start := GREATEST(audit._partition_floor(pg_catalog.now(), v_step),
                        (SELECT pg_catalog.max(p.upper) FROM audit.partitions() AS p WHERE p.log = 'change'));
    WHILE v_start < pg_catalog.now() + v_ahead * v_step LOOP
        v_end := audit._partition_next(v_start, v_step);
        partition := audit._partition_suffix(v_start);
        lower := v_start;
        upper := v_end;
        moved := audit._partition_add(v_start, v_end);
        RETURN NEXT;
        v_start := v_end;
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._partition_ahead() IS
    'Internal. Creates the partitions the log needs: for rows in the default partitions, and ahead of now (audit.partitioning).';

REVOKE ALL ON FUNCTION audit._partition_ahead() FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit.maintain()
RETURNS TABLE (action text, object text, lower timestamptz, upper timestamptz, rows bigint)
LANGUAGE plpgsql AS $$
-- For cron: seal what finished, create the partitions the log needs. Idempotent.
DECLARE
    v_before bigint := coalesce((SELECT pg_catalog.max(s.seq) FROM audit.seal AS s), 0);
    v_head audit.seal;
    p record;
BEGIN
    v_head := audit.seal();
    IF v_head.seq IS NOT NULL AND v_head.seq > v_before THEN
        action := 'sealed'; object := pg_catalog.format('block %s', v_head.seq);
        lower := NULL; upper := NULL; rows := v_head.changes;
        RETURN NEXT;
    END IF;
    FOR p IN SELECT * FROM audit._partition_ahead() LOOP
        action := 'created partitions';
        object := pg_catalog.format('audit.change_p%1$s, audit.transaction_p%1$s', p.partition);
        lower := p.lower; upper := p.upper; rows := p.moved;
        RETURN NEXT;
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit.maintain() IS
    'Maintenance for cron (pgaudit-tool maintain): seals the transactions finished since the last block (audit.seal()), moves rows out of the default partitions into partitions of their own and creates partitions until audit.partitioning.ahead intervals after now. Idempotent; one row per action (rows: changes sealed, or rows moved into new partitions).';

REVOKE ALL ON FUNCTION audit.maintain() FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit.set_partitioning(p_interval interval DEFAULT NULL, p_ahead integer DEFAULT NULL)
RETURNS audit.partitioning
LANGUAGE plpgsql AS $$
-- Changes the settings of future partitions; existing partitions keep their ranges.
DECLARE
    v_row audit.partitioning;
BEGIN
    UPDATE audit.partitioning AS s
       SET partition_interval = coalesce(p_interval, s.partition_interval), ahead = coalesce(p_ahead, s.ahead),
           changed_at = pg_catalog.now(), changed_by = session_user
     WHERE s.partition_interval IS DISTINCT FROM coalesce(p_interval, s.partition_interval)
        OR s.ahead IS DISTINCT FROM coalesce(p_ahead, s.ahead);
    SELECT * INTO v_row FROM audit.partitioning;
    RETURN v_row;
EXCEPTION WHEN check_violation THEN
    RAISE EXCEPTION '%', audit._partitioning_problem(p_interval, p_ahead)
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Examples: 1 minute, 6 hours, 1 day, 1 week, 1 month, 1 year; ahead from 1 to 1000.';
END
$$;

COMMENT ON FUNCTION audit.set_partitioning(interval, integer) IS
    'Sets the interval of the partitions created from now on (at least 1 minute; whole months, or no months) and how many intervals ahead audit.maintain() keeps them; null leaves a setting as it is. Existing partitions keep their ranges.';

REVOKE ALL ON FUNCTION audit.set_partitioning(interval, integer) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._partitioning_problem(p_interval interval, p_ahead integer) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_interval < interval '1 minute' THEN pg_catalog.format('partition interval %s is shorter than 1 minute', p_interval)
        WHEN pg_catalog.date_trunc('month', p_interval) NOT IN (interval '0', p_interval) THEN pg_catalog.format(
            'partition interval %s mixes months with days or hours: use whole months (1 month, 1 year) or none (1 day, 1 week)', p_interval)
        ELSE pg_catalog.format('partitions ahead must be between 1 and 1000, not %s', p_ahead)
    END
$$;

COMMENT ON FUNCTION audit._partitioning_problem(interval, integer) IS
    'Internal. What is wrong with partitioning settings the check constraints of audit.partitioning refused.';


CREATE OR REPLACE FUNCTION audit._partition_legacy() RETURNS bigint
LANGUAGE plpgsql AS $$
-- Upgrade to revision 0009: moves the rows of the unpartitioned log (audit.change_0008,
-- audit.transaction_0008) into partitions covering them, keeps the change id sequence going,
-- and drops the old tables. Returns the change rows moved; 0 when there is nothing to move.
DECLARE
    v_step interval := (SELECT s.partition_interval FROM audit.partitioning AS s);
    v_first timestamptz;
    v_count bigint;
    v_last bigint;
    v_moved bigint;
BEGIN
    IF pg_catalog.to_regclass('audit.change_0008') IS NULL THEN
        RETURN 0;
    END IF;
    v_first := LEAST((SELECT pg_catalog.min(x.started_at) FROM audit.transaction_0008 AS x),
                     (SELECT pg_catalog.min(c.statement_at) FROM audit.change_0008 AS c));
    IF v_first IS NOT NULL THEN
        v_first := audit._partition_floor(v_first, v_step);
        v_count := pg_catalog.ceil(pg_catalog.date_part('epoch', pg_catalog.now() - v_first)
                                   / pg_catalog.date_part('epoch', v_step));
        IF v_count > 1000 THEN
            RAISE EXCEPTION 'the log goes back to %: with a partition interval of % it would need % partitions (at most 1000)',
                            v_first, v_step, v_count
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Upgrade with a longer interval (pgaudit-tool install --partition-interval ''1 month''); it can be shortened later for new partitions.';
        END IF;
        WHILE v_first <= pg_catalog.now() LOOP
            -- No commit marker yet: the rows moved keep their commit times (99_finish.sql).
            PERFORM audit._partition_add(v_first, audit._partition_next(v_first, v_step), false);
            v_first := audit._partition_next(v_first, v_step);
        END LOOP;
    END IF;
    INSERT INTO audit.transaction SELECT * FROM audit.transaction_0008;
    INSERT INTO audit.change (id, txid, relid, schema_name, table_name, op, role, statement_at, clock_at, pk, old, new, started_at)
    OVERRIDING SYSTEM VALUE
    SELECT c.id, c.txid, c.relid, c.schema_name, c.table_name, c.op, c.role, c.statement_at, c.clock_at, c.pk, c.old, c.new,
           coalesce(x.started_at, c.statement_at)
      FROM audit.change_0008 AS c LEFT JOIN audit.transaction_0008 AS x ON x.txid = c.txid;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    SELECT CASE WHEN q.is_called THEN q.last_value END INTO v_last FROM audit.change_0008_id_seq AS q;
    v_last := GREATEST(v_last, (SELECT pg_catalog.max(c.id) FROM audit.change AS c));
    IF v_last IS NOT NULL THEN
        PERFORM pg_catalog.setval(pg_catalog.pg_get_serial_sequence('audit.change', 'id'), v_last);
    END IF;
    DROP TABLE audit.change_0008;
    DROP TABLE audit.transaction_0008;
    RETURN v_moved;
END
$$;

COMMENT ON FUNCTION audit._partition_legacy() IS
    'Internal. Upgrade to schema revision 0009: moves the unpartitioned log into partitions and drops it (called by every install; does nothing once done).';

REVOKE ALL ON FUNCTION audit._partition_legacy() FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit._doctor_partitions()
RETURNS TABLE (severity text, object text, problem text, fix text)
LANGUAGE plpgsql STABLE AS $$
-- Partitions about to run out, rows in the default partitions, ranges of one log table
-- missing in the other.
DECLARE
    v_step interval := (SELECT s.partition_interval FROM audit.partitioning AS s);
    v_end timestamptz := (SELECT pg_catalog.max(p.upper) FROM audit.partitions() AS p WHERE p.log = 'change');
    v_rows bigint;
    t record;
BEGIN
    IF v_end IS NULL OR v_end < pg_catalog.now() + v_step THEN
        severity := 'warning'; object := 'audit.change';
        problem := CASE WHEN v_end IS NULL OR v_end <= pg_catalog.now()
                        THEN pg_catalog.format('the partitions of the log ended %s: new history goes to the default partitions', coalesce(v_end::text, 'before any existed'))
                        ELSE pg_catalog.format('the partitions of the log end at %s, less than one interval (%s) from now', v_end, v_step) END
                   || '; schedule pgaudit-tool maintain at least once per interval';
        fix := 'SELECT * FROM audit.maintain()';
        RETURN NEXT;
    END IF;
    v_rows := (SELECT pg_catalog.count(*) FROM audit.change_default) + (SELECT pg_catalog.count(*) FROM audit.transaction_default);
    IF v_rows > 0 THEN
        severity := 'warning'; object := 'audit.change_default';
        problem := pg_catalog.format('%s rows of the log are in the default partitions (no partition covered their transaction''s start): archive and retention cannot drop them until they have a partition', v_rows);
        fix := 'SELECT * FROM audit.maintain()';
        RETURN NEXT;
    END IF;
    FOR t IN SELECT p.partition FROM audit.partitions() AS p
              WHERE p.log = 'transaction'
                AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger AS g
                                 WHERE g.tgrelid = p.partition AND g.tgname = 'mark_commit' AND g.tgenabled = 'A') LOOP
        severity := 'error'; object := t.partition::text;
        problem := 'its commit marker (trigger mark_commit, ENABLE ALWAYS) is missing or not always enabled: transactions written there get no commit time';
        fix := pg_catalog.format('SELECT audit._partition_marker(%L)', t.partition);
        RETURN NEXT;
    END LOOP;
    FOR t IN SELECT coalesce(c.partition, x.partition) AS part, coalesce(c.lower, x.lower) AS lower,
                    CASE WHEN c.partition IS NULL THEN 'audit.change' ELSE 'audit.transaction' END AS missing_in
               FROM (SELECT * FROM audit.partitions() WHERE log = 'change' AND lower IS NOT NULL) AS c
               FULL JOIN (SELECT * FROM audit.partitions() WHERE log = 'transaction' AND lower IS NOT NULL) AS x
                 ON x.lower = c.lower AND x.upper = c.upper
              WHERE c.partition IS NULL OR x.partition IS NULL LOOP
        severity := 'error'; object := t.part::text;
        problem := pg_catalog.format('%s has no partition of the same range (from %s): the two log tables must be partitioned alike', t.missing_in, t.lower);
        fix := NULL;
        RETURN NEXT;
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit._doctor_partitions() IS
    'Internal. Doctor checks of the partitioned log: partitions running out, rows in the default partitions, commit markers missing, partitions of one log table without their counterpart in the other.';
