-- pgaudit_tool: reports (pgaudit-tool report). The aggregates of a window of history.
--
-- A report reads the changes captured in [since, until) (capture time, as audit.history's
-- "at"; NULL: no bound), optionally only of some tables, actors (pgaudit.actor) and login roles.
-- Every function below aggregates on the server and returns a bounded result: the client never
-- reads the window's rows, only these figures and the capped timeline.
--
-- "Who" (a subject) is the application user when the transaction named one (kind 'actor'),
-- else the login role (kind 'db_user'), as the watcher judges subjects.
--
-- audit.report_window (the changes) and audit.report_base (the changes counted per transaction,
-- table, operation and hour: a few rows per transaction) are plain SQL functions (no SET
-- clause, operators qualified) so that the planner inlines them into each report query; the
-- report functions are PL/pgSQL so that their queries are planned with the actual bounds (the
-- BRIN index on capture time, the tables). Every figure but the columns and the rows changed
-- most comes from audit.report_base, whose grouping keys are the change table's own (no join,
-- no text built per change), so that it is one hashed pass over the window.
--
-- The report functions run with jit off and work_mem 64MB (their own SET clauses): on a window
-- of 1M changes (bench's report_s) JIT compiled report_overview's plan for 5 s of its 10 s, and
-- the ranking of the rows changed most spilled 100 MB to disk at the default 4MB; with both,
-- report_overview takes 3.8 s instead of 13 s and report_columns 2.7 s instead of 3.2 s.
-- report_window and report_base are PARALLEL SAFE: the planner considers a parallel plan for a
-- query an inlined function is part of only when the function is marked so (report_columns:
-- 1.5 s with two workers instead of 3.9 s).

CREATE OR REPLACE FUNCTION audit._report_txids(p_actors text[], p_db_users text[])
RETURNS TABLE (txid xid8)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    -- The transactions of the actors and login roles given: a report about some of them reads
    -- only their changes (by the change table's txid index), not the whole window.
    SELECT t.txid FROM audit.transaction AS t
     WHERE (p_actors IS NULL OR t.actor OPERATOR(pg_catalog.=) ANY (p_actors))
       AND (p_db_users IS NULL OR t.db_user OPERATOR(pg_catalog.=) ANY (p_db_users))
$$;

COMMENT ON FUNCTION audit._report_txids(text[], text[]) IS
    'Internal. The transactions of the given actors and login roles (NULL: any), so that audit.report_window and audit.report_base read only their changes. Inlined.';


CREATE OR REPLACE FUNCTION audit.report_window(
    p_since timestamptz, p_until timestamptz, p_tables regclass[], p_actors text[], p_db_users text[])
RETURNS TABLE (id bigint, txid xid8, relid oid, schema_name text, relname text, op "char", pk jsonb, old jsonb,
               new jsonb, at timestamptz, actor text, db_user text, client_addr inet,
               subject_kind text, subject text)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT c.id, c.txid, c.relid, c.schema_name, c.table_name, c.op,
           c.pk, c.old, c.new, c.clock_at, t.actor, t.db_user, t.client_addr,
           CASE WHEN t.actor IS NOT NULL THEN 'actor' ELSE 'db_user' END,
           COALESCE(t.actor, t.db_user)
      FROM audit.change AS c
      LEFT JOIN audit.transaction AS t
        ON t.txid OPERATOR(pg_catalog.=) c.txid AND t.started_at OPERATOR(pg_catalog.=) c.started_at
     WHERE c.clock_at OPERATOR(pg_catalog.>=) COALESCE(p_since, '-infinity'::timestamptz)
       AND c.clock_at OPERATOR(pg_catalog.<) COALESCE(p_until, 'infinity'::timestamptz)
       -- a transaction starts before its changes: partitions that start later are skipped
       AND c.started_at OPERATOR(pg_catalog.<) COALESCE(p_until, 'infinity'::timestamptz)
       AND (p_tables IS NULL OR c.relid OPERATOR(pg_catalog.=) ANY (p_tables::oid[]))
       AND (p_actors IS NULL AND p_db_users IS NULL OR c.txid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT x.txid FROM audit._report_txids(p_actors, p_db_users) AS x)))
       AND (p_actors IS NULL OR t.actor OPERATOR(pg_catalog.=) ANY (p_actors))
       AND (p_db_users IS NULL OR t.db_user OPERATOR(pg_catalog.=) ANY (p_db_users))
$$;

COMMENT ON FUNCTION audit.report_window(timestamptz, timestamptz, regclass[], text[], text[]) IS
    'The changes a report covers: captured in [since, until) (NULL: unbounded), of the tables, actors and login roles given (NULL: all), with their transaction''s context and subject (the actor, else the login role). Inlined into the report_* functions, which group by the table''s schema and name (relname) before quoting them.';


CREATE OR REPLACE FUNCTION audit.report_base(
    p_since timestamptz, p_until timestamptz, p_tables regclass[], p_actors text[], p_db_users text[])
RETURNS TABLE (txid xid8, relid oid, schema_name text, relname text, op "char", hour timestamptz,
               changes bigint, first_at timestamptz, last_at timestamptz, actor text, db_user text,
               client_addr inet, subject_kind text, subject text)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT b.txid, b.relid, b.schema_name, b.table_name, b.op, b.hour, b.n, b.first_at, b.last_at,
           t.actor, t.db_user, t.client_addr,
           CASE WHEN t.actor IS NOT NULL THEN 'actor' ELSE 'db_user' END,
           COALESCE(t.actor, t.db_user)
      FROM (SELECT c.txid, c.started_at, c.relid, c.schema_name, c.table_name, c.op,
                   pg_catalog.date_trunc('hour', c.clock_at, 'UTC') AS hour,
                   pg_catalog.count(*) AS n, pg_catalog.min(c.clock_at) AS first_at,
                   pg_catalog.max(c.clock_at) AS last_at
              FROM audit.change AS c
             WHERE c.clock_at OPERATOR(pg_catalog.>=) COALESCE(p_since, '-infinity'::timestamptz)
               AND c.clock_at OPERATOR(pg_catalog.<) COALESCE(p_until, 'infinity'::timestamptz)
               AND c.started_at OPERATOR(pg_catalog.<) COALESCE(p_until, 'infinity'::timestamptz)
               AND (p_tables IS NULL OR c.relid OPERATOR(pg_catalog.=) ANY (p_tables::oid[]))
               AND (p_actors IS NULL AND p_db_users IS NULL OR c.txid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT x.txid FROM audit._report_txids(p_actors, p_db_users) AS x)))
             GROUP BY 1, 2, 3, 4, 5, 6, 7) AS b
      LEFT JOIN audit.transaction AS t
        ON t.txid OPERATOR(pg_catalog.=) b.txid AND t.started_at OPERATOR(pg_catalog.=) b.started_at
     WHERE (p_actors IS NULL OR t.actor OPERATOR(pg_catalog.=) ANY (p_actors))
       AND (p_db_users IS NULL OR t.db_user OPERATOR(pg_catalog.=) ANY (p_db_users))
$$;

COMMENT ON FUNCTION audit.report_base(timestamptz, timestamptz, regclass[], text[], text[]) IS
    'The changes of a report''s window (as audit.report_window) counted per transaction, table, operation and hour (UTC), with first and last capture time, the transaction''s context and subject. Inlined into the report_* functions.';


CREATE OR REPLACE FUNCTION audit.report_overview(
    p_since timestamptz DEFAULT NULL, p_until timestamptz DEFAULT NULL,
    p_tables regclass[] DEFAULT NULL, p_actors text[] DEFAULT NULL, p_db_users text[] DEFAULT NULL,
    p_bucket text DEFAULT NULL, p_series integer DEFAULT 10, p_top_rows integer DEFAULT 5,
    p_largest integer DEFAULT 10, p_latest integer DEFAULT 50)
RETURNS TABLE (bucket text, summary jsonb, by_table jsonb, by_subject jsonb, subjects jsonb, subject_tables jsonb, tables jsonb, transactions jsonb)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off SET work_mem = '64MB' SET TimeZone = 'UTC' AS $$
#variable_conflict use_column
BEGIN
    IF p_bucket NOT IN ('hour', 'day') THEN
        RAISE EXCEPTION 'bucket must be hour or day, not %', p_bucket USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH b AS MATERIALIZED (  -- one pass over the window, shared by every section
        SELECT * FROM audit.report_base(p_since, p_until, p_tables, p_actors, p_db_users)
    ), kk AS (
        SELECT COALESCE(p_bucket,
                        CASE WHEN COALESCE(p_until, now())
                                  - COALESCE(p_since, min(b.first_at), COALESCE(p_until, now()))
                                  <= interval '3 days'
                             THEN 'hour' ELSE 'day' END) AS bucket
          FROM b
    ), series AS (  -- changes per bucket by table and by subject: the p_series largest of each, then 'other'
        WITH g AS (
            SELECT d.dim, date_trunc((SELECT kk.bucket FROM kk), b.hour, 'UTC') AS bucket,
                   CASE d.dim WHEN 'table' THEN 'table' ELSE b.subject_kind END AS kind,
                   CASE d.dim WHEN 'table' THEN format('%I.%I', b.schema_name, b.relname) ELSE b.subject END AS name,
                   sum(b.changes) AS n
              FROM b AS b CROSS JOIN (VALUES ('table'), ('subject')) AS d(dim)
             GROUP BY 1, 2, 3, 4
        ), ranked AS (
            SELECT s.dim, s.kind, s.name, rank() OVER (PARTITION BY s.dim ORDER BY s.total DESC, s.kind, s.name) AS r
              FROM (SELECT g.dim, g.kind, g.name, sum(g.n) AS total FROM g GROUP BY 1, 2, 3) AS s
        )
        SELECT g.dim, g.bucket,
               CASE WHEN r.r <= p_series THEN g.kind ELSE 'other' END AS kind,
               CASE WHEN r.r <= p_series THEN g.name END AS name,
               sum(g.n)::bigint AS changes
          FROM g JOIN ranked AS r ON r.dim = g.dim AND r.kind = g.kind AND r.name IS NOT DISTINCT FROM g.name
         GROUP BY 1, 2, 3, 4
    )
    SELECT kk.bucket,
        (SELECT to_jsonb(x) FROM (
                SELECT COALESCE(sum(b.changes), 0)::bigint, count(DISTINCT b.txid), count(DISTINCT b.relid),
                       count(DISTINCT b.actor), count(DISTINCT b.db_user), count(DISTINCT b.client_addr),
                       COALESCE(sum(b.changes) FILTER (WHERE b.op = 'I'), 0)::bigint,
                       COALESCE(sum(b.changes) FILTER (WHERE b.op = 'U'), 0)::bigint,
                       COALESCE(sum(b.changes) FILTER (WHERE b.op = 'D'), 0)::bigint,
                       COALESCE(sum(b.changes) FILTER (WHERE b.op = 'T'), 0)::bigint,
                       min(b.first_at), max(b.last_at),
                       (SELECT count(*) FROM audit.report_alerts(p_since, p_until, p_tables, p_actors, p_db_users, NULL))
                  FROM b AS b
           ) AS x(changes, transactions, tables, actors, db_users, client_addrs, inserts, updates, deletes, truncates, first_at, last_at, alerts)),
        COALESCE((SELECT jsonb_agg(to_jsonb(x) ORDER BY x.bucket, x.kind, x.name) FROM (
                SELECT s.bucket, s.kind, s.name, s.changes FROM series AS s WHERE s.dim = 'table') AS x), '[]'),
        COALESCE((SELECT jsonb_agg(to_jsonb(x) ORDER BY x.bucket, x.kind, x.name) FROM (
                SELECT s.bucket, s.kind, s.name, s.changes FROM series AS s WHERE s.dim = 'subject') AS x), '[]'),
        COALESCE((SELECT jsonb_agg(to_jsonb(x)) FROM (
                WITH h AS (  -- per subject, transaction and hour
                    SELECT b.subject_kind AS kind, b.subject AS name, b.txid, b.db_user, b.client_addr,
                           b.hour, sum(b.changes) AS n, min(b.first_at) AS first_at, max(b.last_at) AS last_at
                      FROM b AS b
                     GROUP BY 1, 2, 3, 4, 5, 6
                ), per_tx AS (
                    SELECT DISTINCT ON (h.kind, h.name) h.kind, h.name, h.txid, sum(h.n) AS n
                      FROM h GROUP BY h.kind, h.name, h.txid
                     ORDER BY h.kind, h.name, sum(h.n) DESC, h.txid DESC
                ), per_hour AS (
                    SELECT DISTINCT ON (h.kind, h.name) h.kind, h.name, h.hour, sum(h.n) AS n
                      FROM h GROUP BY h.kind, h.name, h.hour
                     ORDER BY h.kind, h.name, sum(h.n) DESC, h.hour DESC
                )
                SELECT s.kind, s.name, s.changes, s.transactions, s.first_at, s.last_at,
                       ph.hour, ph.n::bigint, pt.txid, pt.n::bigint, s.db_users, s.client_addrs
                  FROM (SELECT h.kind, h.name, sum(h.n)::bigint AS changes,
                               count(DISTINCT h.txid) AS transactions,
                               min(h.first_at) AS first_at, max(h.last_at) AS last_at,
                               array_agg(DISTINCT h.db_user ORDER BY h.db_user)
                                   FILTER (WHERE h.db_user IS NOT NULL) AS db_users,
                               array_agg(DISTINCT host(h.client_addr) ORDER BY host(h.client_addr))
                                   FILTER (WHERE h.client_addr IS NOT NULL) AS client_addrs
                          FROM h GROUP BY h.kind, h.name) AS s
                  JOIN per_tx AS pt ON pt.kind = s.kind AND pt.name IS NOT DISTINCT FROM s.name
                  JOIN per_hour AS ph ON ph.kind = s.kind AND ph.name IS NOT DISTINCT FROM s.name
                 ORDER BY s.changes DESC, s.kind, s.name
           ) AS x(kind, name, changes, transactions, first_at, last_at, busiest_hour, busiest_hour_changes, largest_txid, largest_changes, db_users, client_addrs)), '[]'),
        COALESCE((SELECT jsonb_agg(to_jsonb(x)) FROM (
                SELECT b.subject_kind, b.subject, format('%I.%I', b.schema_name, b.relname),
                       COALESCE(sum(b.changes) FILTER (WHERE b.op = 'I'), 0)::bigint,
                       COALESCE(sum(b.changes) FILTER (WHERE b.op = 'U'), 0)::bigint,
                       COALESCE(sum(b.changes) FILTER (WHERE b.op = 'D'), 0)::bigint,
                       COALESCE(sum(b.changes) FILTER (WHERE b.op = 'T'), 0)::bigint,
                       sum(b.changes)::bigint
                  FROM b AS b
                 GROUP BY b.subject_kind, b.subject, b.schema_name, b.relname
                 ORDER BY 1, 2, 8 DESC, 3
           ) AS x(kind, name, table_name, inserts, updates, deletes, truncates, changes)), '[]'),
        COALESCE((SELECT jsonb_agg(to_jsonb(x)) FROM (
                WITH per_tx AS (  -- per table and transaction
                    SELECT format('%I.%I', b.schema_name, b.relname) AS table_name, b.relid, b.txid, b.subject_kind,
                           b.subject,
                           COALESCE(sum(b.changes) FILTER (WHERE b.op = 'I'), 0) AS i,
                           COALESCE(sum(b.changes) FILTER (WHERE b.op = 'U'), 0) AS u,
                           COALESCE(sum(b.changes) FILTER (WHERE b.op = 'D'), 0) AS d,
                           COALESCE(sum(b.changes) FILTER (WHERE b.op = 'T'), 0) AS t,
                           sum(b.changes) AS n, min(b.first_at) AS first_at, max(b.last_at) AS last_at
                      FROM b AS b
                     GROUP BY b.relid, b.schema_name, b.relname, b.txid, b.subject_kind, b.subject
                ), per_row AS MATERIALIZED (  -- per row (key)
                    SELECT w.relid, w.pk, count(*) AS n, max(w.at) AS last_at
                      FROM audit.report_window(p_since, p_until, p_tables, p_actors, p_db_users) AS w
                     WHERE w.pk IS NOT NULL
                     GROUP BY w.relid, w.pk
                ), top_rows AS (  -- per table: its keys, and the most changed (a top-N sort each, not a sort of all keys)
                    SELECT k.relid, k.keys,
                           (SELECT COALESCE(jsonb_agg(jsonb_build_object('pk', r.pk, 'changes', r.n, 'last_at', r.last_at)
                                                      ORDER BY r.n DESC, r.last_at DESC), '[]')
                              FROM (SELECT p.pk, p.n, p.last_at FROM per_row AS p WHERE p.relid = k.relid
                                     ORDER BY p.n DESC, p.last_at DESC LIMIT p_top_rows) AS r) AS top
                      FROM (SELECT p.relid, count(*) AS keys FROM per_row AS p GROUP BY p.relid) AS k
                )
                SELECT x.table_name, sum(x.n)::bigint, sum(x.i)::bigint, sum(x.u)::bigint, sum(x.d)::bigint,
                       sum(x.t)::bigint, COALESCE(tr.keys, 0)::bigint, count(DISTINCT x.txid),
                       count(DISTINCT (x.subject_kind, x.subject)), min(x.first_at), max(x.last_at),
                       COALESCE(tr.top, '[]')
                  FROM per_tx AS x
                  LEFT JOIN top_rows AS tr ON tr.relid = x.relid
                 GROUP BY x.table_name, tr.keys, tr.top
                 ORDER BY 2 DESC, 1
           ) AS x(table_name, changes, inserts, updates, deletes, truncates, rows, transactions, subjects, first_at, last_at, top_rows)), '[]'),
        COALESCE((SELECT jsonb_agg(to_jsonb(x)) FROM (
                WITH x AS (
                    SELECT b.txid, format('%I.%I', b.schema_name, b.relname) AS table_name,
                           sum(b.changes) AS n,
                           COALESCE(sum(b.changes) FILTER (WHERE b.op = 'I'), 0) AS i,
                           COALESCE(sum(b.changes) FILTER (WHERE b.op = 'U'), 0) AS u,
                           COALESCE(sum(b.changes) FILTER (WHERE b.op = 'D'), 0) AS d,
                           COALESCE(sum(b.changes) FILTER (WHERE b.op = 'T'), 0) AS t,
                           max(b.last_at) AS last_at
                      FROM b AS b
                     GROUP BY b.txid, b.schema_name, b.relname
                ), g AS (
                    SELECT x.txid, sum(x.n)::bigint AS n, sum(x.i)::bigint AS i, sum(x.u)::bigint AS u,
                           sum(x.d)::bigint AS d, sum(x.t)::bigint AS t,
                           array_agg(x.table_name ORDER BY x.n DESC, x.table_name) AS tables,
                           max(x.last_at) AS last_at
                      FROM x GROUP BY x.txid
                ), ranked AS (
                    SELECT g.*, COALESCE(tr.committed_at, g.last_at) AS done, tr.started_at, tr.actor,
                           tr.db_user, tr.client_addr, tr.application_name, tr.context,
                           row_number() OVER (ORDER BY g.n DESC, g.txid DESC) AS largest_rank,
                           row_number() OVER (ORDER BY COALESCE(tr.committed_at, g.last_at) DESC, g.txid DESC) AS latest_rank
                      FROM g LEFT JOIN audit.transaction AS tr ON tr.txid = g.txid
                )
                SELECT r.txid, r.done, r.started_at, r.actor, r.db_user, r.client_addr, r.application_name,
                       r.context, r.n, r.i, r.u, r.d, r.t, r.tables,
                       CASE WHEN r.largest_rank <= p_largest THEN r.largest_rank END,
                       CASE WHEN r.latest_rank <= p_latest THEN r.latest_rank END
                  FROM ranked AS r
                 WHERE r.largest_rank <= p_largest OR r.latest_rank <= p_latest
                 ORDER BY r.latest_rank
           ) AS x(txid, committed_at, started_at, actor, db_user, client_addr, application_name, context, changes, inserts, updates, deletes, truncates, tables, largest_rank, latest_rank)), '[]')
      FROM kk;
END
$$;

COMMENT ON FUNCTION audit.report_overview(timestamptz, timestamptz, regclass[], text[], text[], text, integer, integer, integer, integer) IS
    'Every section of a report but the columns, the row changes and the alerts, from one pass over the window (audit.report_base), as JSON (times in UTC): the bucket (p_bucket, or NULL: hour for a window up to 3 days, else day), and the rows audit.report_summary, report_activity (by table and by subject), report_subjects, report_subject_tables, report_tables and report_transactions return. What pgaudit-tool report reads.';


CREATE OR REPLACE FUNCTION audit.report_summary(
    p_since timestamptz DEFAULT NULL, p_until timestamptz DEFAULT NULL,
    p_tables regclass[] DEFAULT NULL, p_actors text[] DEFAULT NULL, p_db_users text[] DEFAULT NULL)
RETURNS TABLE (changes bigint, transactions bigint, tables bigint, actors bigint, db_users bigint,
               client_addrs bigint, inserts bigint, updates bigint, deletes bigint,
               truncates bigint, first_at timestamptz, last_at timestamptz, alerts bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off SET work_mem = '64MB' AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT * FROM jsonb_to_record((SELECT o.summary FROM audit.report_overview(p_since, p_until, p_tables, p_actors, p_db_users) AS o))
        AS x(changes bigint, transactions bigint, tables bigint, actors bigint, db_users bigint, client_addrs bigint, inserts bigint, updates bigint, deletes bigint, truncates bigint, first_at timestamptz, last_at timestamptz, alerts bigint);
END
$$;

COMMENT ON FUNCTION audit.report_summary(timestamptz, timestamptz, regclass[], text[], text[]) IS
    'One row: the figures of a report''s window (audit.report_window): changes, transactions, tables, actors, login roles, client addresses, changes per operation, first and last change, and alerts the watcher stored for that window.';


CREATE OR REPLACE FUNCTION audit.report_alerts(
    p_since timestamptz DEFAULT NULL, p_until timestamptz DEFAULT NULL,
    p_tables regclass[] DEFAULT NULL, p_actors text[] DEFAULT NULL, p_db_users text[] DEFAULT NULL,
    p_limit integer DEFAULT 50)
RETURNS TABLE (id bigint, raised_at timestamptz, at timestamptz, rule text, detector text,
               severity text, table_name text, actor text, db_user text, txids xid8[],
               changes bigint, summary text, revert text, acked_at timestamptz, acked_by text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off SET work_mem = '64MB' AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT a.id, a.raised_at, a.at, a.rule, a.detector, a.severity, a.table_name, a.actor,
           a.db_user, a.txids, a.changes, a.summary, a.revert, a.acked_at, a.acked_by
      FROM audit.alert AS a
     WHERE COALESCE(a.at, a.raised_at) >= COALESCE(p_since, '-infinity'::timestamptz)
       AND COALESCE(a.at, a.raised_at) < COALESCE(p_until, 'infinity'::timestamptz)
       AND (p_tables IS NULL OR a.relid = ANY (p_tables::oid[]))
       AND (p_actors IS NULL OR a.actor = ANY (p_actors))
       AND (p_db_users IS NULL OR a.db_user = ANY (p_db_users))
     ORDER BY CASE a.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END,
              COALESCE(a.at, a.raised_at) DESC, a.id DESC
     LIMIT p_limit;
END
$$;

COMMENT ON FUNCTION audit.report_alerts(timestamptz, timestamptz, regclass[], text[], text[], integer) IS
    'The watcher''s alerts (audit.alert) about a report''s window (their "at", else when raised, in [since, until)), narrowed like audit.report_window, most severe and newest first; at most p_limit (NULL: all).';


CREATE OR REPLACE FUNCTION audit.report_activity(
    p_since timestamptz DEFAULT NULL, p_until timestamptz DEFAULT NULL,
    p_tables regclass[] DEFAULT NULL, p_actors text[] DEFAULT NULL, p_db_users text[] DEFAULT NULL,
    p_bucket text DEFAULT 'hour', p_by text DEFAULT 'table', p_series integer DEFAULT 10)
RETURNS TABLE (bucket timestamptz, kind text, name text, changes bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off SET work_mem = '64MB' AS $$
#variable_conflict use_column
BEGIN
    IF p_bucket NOT IN ('hour', 'day') THEN
        RAISE EXCEPTION 'bucket must be hour or day, not %', p_bucket USING ERRCODE = '22023';
    END IF;
    IF p_by NOT IN ('table', 'subject') THEN
        RAISE EXCEPTION 'by must be table or subject, not %', p_by USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    SELECT * FROM jsonb_to_recordset((SELECT CASE p_by WHEN 'table' THEN o.by_table ELSE o.by_subject END FROM audit.report_overview(p_since, p_until, p_tables, p_actors, p_db_users, p_bucket => p_bucket, p_series => p_series) AS o))
        AS x(bucket timestamptz, kind text, name text, changes bigint);
END
$$;

COMMENT ON FUNCTION audit.report_activity(timestamptz, timestamptz, regclass[], text[], text[], text, text, integer) IS
    'Changes of a report''s window per hour or day (p_bucket, UTC) and per table (p_by = ''table'': kind ''table'') or per subject (p_by = ''subject'': kind ''actor'' or ''db_user''); the p_series busiest series by name, the rest summed under kind ''other'' (name NULL). For stacked charts.';


CREATE OR REPLACE FUNCTION audit.report_subjects(
    p_since timestamptz DEFAULT NULL, p_until timestamptz DEFAULT NULL,
    p_tables regclass[] DEFAULT NULL, p_actors text[] DEFAULT NULL, p_db_users text[] DEFAULT NULL)
RETURNS TABLE (kind text, name text, changes bigint, transactions bigint, first_at timestamptz,
               last_at timestamptz, busiest_hour timestamptz, busiest_hour_changes bigint,
               largest_txid xid8, largest_changes bigint, db_users text[], client_addrs text[])
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off SET work_mem = '64MB' AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT * FROM jsonb_to_recordset((SELECT o.subjects FROM audit.report_overview(p_since, p_until, p_tables, p_actors, p_db_users) AS o))
        AS x(kind text, name text, changes bigint, transactions bigint, first_at timestamptz, last_at timestamptz, busiest_hour timestamptz, busiest_hour_changes bigint, largest_txid xid8, largest_changes bigint, db_users text[], client_addrs text[]);
END
$$;

COMMENT ON FUNCTION audit.report_subjects(timestamptz, timestamptz, regclass[], text[], text[]) IS
    'Per subject of a report''s window (kind ''actor'': the application user; ''db_user'': the login role of changes without an actor): changes, transactions, first and last change, busiest hour (UTC) and its changes, largest transaction and its changes, login roles and client addresses used. Busiest first.';


CREATE OR REPLACE FUNCTION audit.report_subject_tables(
    p_since timestamptz DEFAULT NULL, p_until timestamptz DEFAULT NULL,
    p_tables regclass[] DEFAULT NULL, p_actors text[] DEFAULT NULL, p_db_users text[] DEFAULT NULL)
RETURNS TABLE (kind text, name text, table_name text, inserts bigint, updates bigint,
               deletes bigint, truncates bigint, changes bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off SET work_mem = '64MB' AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT * FROM jsonb_to_recordset((SELECT o.subject_tables FROM audit.report_overview(p_since, p_until, p_tables, p_actors, p_db_users) AS o))
        AS x(kind text, name text, table_name text, inserts bigint, updates bigint, deletes bigint, truncates bigint, changes bigint);
END
$$;

COMMENT ON FUNCTION audit.report_subject_tables(timestamptz, timestamptz, regclass[], text[], text[]) IS
    'Per subject (see audit.report_subjects) and table of a report''s window: changes per operation and in all.';


CREATE OR REPLACE FUNCTION audit.report_columns(
    p_since timestamptz DEFAULT NULL, p_until timestamptz DEFAULT NULL,
    p_tables regclass[] DEFAULT NULL, p_actors text[] DEFAULT NULL, p_db_users text[] DEFAULT NULL)
RETURNS TABLE (kind text, name text, table_name text, column_name text, changes bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off SET work_mem = '64MB' AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT w.subject_kind, w.subject, format('%I.%I', w.schema_name, w.relname), k.key, count(*)
      FROM audit.report_window(p_since, p_until, p_tables, p_actors, p_db_users) AS w
     CROSS JOIN LATERAL jsonb_object_keys(w.new) AS k(key)
     WHERE w.op = 'U' AND w.old -> k.key IS DISTINCT FROM w.new -> k.key
     GROUP BY w.subject_kind, w.subject, w.schema_name, w.relname, k.key
     ORDER BY 5 DESC, 1, 2, 3, 4;
END
$$;

COMMENT ON FUNCTION audit.report_columns(timestamptz, timestamptz, regclass[], text[], text[]) IS
    'How often each column was changed by an UPDATE in a report''s window, per subject (see audit.report_subjects) and table. Most changed first.';


CREATE OR REPLACE FUNCTION audit.report_tables(
    p_since timestamptz DEFAULT NULL, p_until timestamptz DEFAULT NULL,
    p_tables regclass[] DEFAULT NULL, p_actors text[] DEFAULT NULL, p_db_users text[] DEFAULT NULL,
    p_top_rows integer DEFAULT 5)
RETURNS TABLE (table_name text, changes bigint, inserts bigint, updates bigint, deletes bigint,
               truncates bigint, rows bigint, transactions bigint, subjects bigint,
               first_at timestamptz, last_at timestamptz, top_rows jsonb)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off SET work_mem = '64MB' AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT * FROM jsonb_to_recordset((SELECT o.tables FROM audit.report_overview(p_since, p_until, p_tables, p_actors, p_db_users, p_top_rows => p_top_rows) AS o))
        AS x(table_name text, changes bigint, inserts bigint, updates bigint, deletes bigint, truncates bigint, rows bigint, transactions bigint, subjects bigint, first_at timestamptz, last_at timestamptz, top_rows jsonb);
END
$$;

COMMENT ON FUNCTION audit.report_tables(timestamptz, timestamptz, regclass[], text[], text[], integer) IS
    'Per table of a report''s window: changes in all and per operation, distinct rows (keys), transactions and subjects, first and last change, and its p_top_rows most changed rows (a JSON array of {pk, changes, last_at}). Busiest first.';


CREATE OR REPLACE FUNCTION audit.report_transactions(
    p_since timestamptz DEFAULT NULL, p_until timestamptz DEFAULT NULL,
    p_tables regclass[] DEFAULT NULL, p_actors text[] DEFAULT NULL, p_db_users text[] DEFAULT NULL,
    p_largest integer DEFAULT 10, p_latest integer DEFAULT 50)
RETURNS TABLE (txid xid8, committed_at timestamptz, started_at timestamptz, actor text,
               db_user text, client_addr inet, application_name text, context jsonb,
               changes bigint, inserts bigint, updates bigint, deletes bigint, truncates bigint,
               tables text[], largest_rank bigint, latest_rank bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off SET work_mem = '64MB' AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT * FROM jsonb_to_recordset((SELECT o.transactions FROM audit.report_overview(p_since, p_until, p_tables, p_actors, p_db_users, p_largest => p_largest, p_latest => p_latest) AS o))
        AS x(txid xid8, committed_at timestamptz, started_at timestamptz, actor text, db_user text, client_addr inet, application_name text, context jsonb, changes bigint, inserts bigint, updates bigint, deletes bigint, truncates bigint, tables text[], largest_rank bigint, latest_rank bigint);
END
$$;

COMMENT ON FUNCTION audit.report_transactions(timestamptz, timestamptz, regclass[], text[], text[], integer, integer) IS
    'The transactions of a report''s window with their context and their changes in it (in all, per operation, tables busiest first): the p_largest largest (largest_rank 1..) and the p_latest latest by commit time (latest_rank 1.., newest first). Newest first.';


CREATE OR REPLACE FUNCTION audit.report_changes(
    p_txids xid8[],
    p_since timestamptz DEFAULT NULL, p_until timestamptz DEFAULT NULL,
    p_tables regclass[] DEFAULT NULL, p_per_transaction integer DEFAULT 20)
RETURNS TABLE (txid xid8, id bigint, table_name text, op text, pk jsonb, old jsonb, new jsonb,
               changed text[], at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off SET work_mem = '64MB' AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT c.txid, c.id, format('%I.%I', c.schema_name, c.table_name),
           CASE c.op WHEN 'I' THEN 'INSERT' WHEN 'U' THEN 'UPDATE' WHEN 'D' THEN 'DELETE' ELSE 'TRUNCATE' END,
           c.pk, c.old, c.new,
           CASE WHEN c.op = 'U' THEN audit.changed_columns(c.old, c.new) END, c.clock_at
      FROM pg_catalog.unnest(p_txids) AS x(txid)
     CROSS JOIN LATERAL (
         SELECT ch.* FROM audit.change AS ch
          WHERE ch.txid = x.txid
            AND ch.clock_at >= COALESCE(p_since, '-infinity'::timestamptz)
            AND ch.clock_at < COALESCE(p_until, 'infinity'::timestamptz)
            AND (p_tables IS NULL OR ch.relid = ANY (p_tables::oid[]))
          ORDER BY ch.id
          LIMIT p_per_transaction) AS c
     ORDER BY c.txid, c.id;
END
$$;

COMMENT ON FUNCTION audit.report_changes(xid8[], timestamptz, timestamptz, regclass[], integer) IS
    'The row changes of the given transactions within a report''s window (and tables), the first p_per_transaction of each in capture order, with the columns an UPDATE changed: the expandable rows of the report''s timeline.';
