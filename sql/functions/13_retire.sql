-- pgaudit_tool: old history leaves the log whole (archive --drop, retention), under legal holds.
--
-- audit.retire() drops partition pairs (audit.change_p<suffix>, audit.transaction_p<suffix>)
-- in one transaction, after checking that every row in them is sealed, that nothing changed
-- since they were archived (the counts the archive wrote) and that no legal hold covers them.
-- It records each in audit.retired_partition and keeps the hash chain provable: a block whose
-- rows all left is listed in audit.retired_block (verify checks its links; verify --archive
-- recomputes it from the files), and a block with rows both dropped and left keeps the digests
-- of the dropped ones in audit.retired_row (see docs/chain.md, "Retired history").
--
-- Holds (audit.hold) are placed with audit.hold() and released with audit.release_holds().

CREATE OR REPLACE FUNCTION audit.archivable(p_before timestamptz, p_suffix text DEFAULT NULL)
RETURNS TABLE (suffix text, lower timestamptz, upper timestamptz, transactions bigint, changes bigint,
               txid_min xid8, txid_max xid8, unsealed bigint, held_by text)
LANGUAGE plpgsql STABLE AS $$
-- The range partition pairs entirely before p_before, oldest first, with their exact counts and
-- how many of their rows are not sealed yet (0: they may be archived and dropped).
DECLARE
    v_sealed xid8 := coalesce((SELECT s.txid_to FROM audit.seal AS s ORDER BY s.seq DESC LIMIT 1), '0');
    p record;
    v_tx record;
    v_ch record;
BEGIN
    FOR p IN SELECT c.partition AS change_part, x.partition AS tx_part, c.lower, c.upper
               FROM audit.partitions() AS c
               JOIN audit.partitions() AS x ON x.log = 'transaction' AND x.lower = c.lower AND x.upper = c.upper
              WHERE c.log = 'change' AND c.upper <= p_before
                AND (p_suffix IS NULL OR c.partition = pg_catalog.to_regclass(pg_catalog.format('audit.%I', 'change_p' || p_suffix)))
              ORDER BY c.lower LOOP
        EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) AS n, pg_catalog.min(r.txid) AS lo, pg_catalog.max(r.txid) AS hi,'
                                  ' pg_catalog.count(*) FILTER (WHERE r.txid >= $1) AS open FROM %s AS r', p.tx_part)
           INTO v_tx USING v_sealed;
        EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) AS n, pg_catalog.min(r.txid) AS lo, pg_catalog.max(r.txid) AS hi,'
                                  ' pg_catalog.count(*) FILTER (WHERE r.txid >= $1) AS open FROM %s AS r', p.change_part)
           INTO v_ch USING v_sealed;
        suffix := pg_catalog.substr(p.change_part::text, pg_catalog.length('audit.change_p') + 1);
        lower := p.lower; upper := p.upper;
        transactions := v_tx.n; changes := v_ch.n;
        txid_min := LEAST(v_tx.lo, v_ch.lo); txid_max := GREATEST(v_tx.hi, v_ch.hi);
        unsealed := v_tx.open + v_ch.open;
        held_by := audit._held_by(p.change_part);
        RETURN NEXT;
    END LOOP;
END
$$;

COMMENT ON FUNCTION audit.archivable(timestamptz, text) IS
    'The partition pairs of the log (suffix: audit.change_p<suffix>, audit.transaction_p<suffix>; all, or the one of p_suffix) whose range ends at or before the given instant, oldest first, with their row counts, transaction id range, rows not sealed yet (only fully sealed partitions may be archived and dropped: seal with audit.maintain() or audit.seal()) and the legal hold that keeps them, if any.';


CREATE OR REPLACE FUNCTION audit._held_by(p_change regclass) RETURNS text
LANGUAGE plpgsql STABLE AS $$
-- The first active hold covering a change partition, described; null when none does.
DECLARE
    h audit.hold;
BEGIN
    FOR h IN SELECT * FROM audit.hold AS x
              WHERE x.released_at IS NULL AND (x.until IS NULL OR x.until > pg_catalog.now())
              ORDER BY x.relid NULLS FIRST, x.id LOOP
        IF h.relid IS NOT NULL THEN
            CONTINUE WHEN NOT audit._has_changes_of(p_change, h.relid);
        END IF;
        RETURN pg_catalog.format('hold %s on %s (placed %s by %s%s%s)', h.id, coalesce(h.table_name, 'the whole log'),
                                 h.placed_at, h.placed_by,
                                 CASE WHEN h.until IS NOT NULL THEN pg_catalog.format(', until %s', h.until) ELSE '' END,
                                 CASE WHEN h.reason IS NOT NULL THEN pg_catalog.format(': %s', h.reason) ELSE '' END);
    END LOOP;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION audit._held_by(regclass) IS
    'Internal. Describes the first active legal hold (audit.hold) that covers a partition of audit.change, or null.';


CREATE OR REPLACE FUNCTION audit._has_changes_of(p_change regclass, p_relid oid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_found boolean;
BEGIN
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s AS c WHERE c.relid = $1)', p_change) INTO v_found USING p_relid;
    RETURN v_found;
END
$$;

COMMENT ON FUNCTION audit._has_changes_of(regclass, oid) IS
    'Internal. Whether a partition of audit.change holds changes of a table.';


CREATE OR REPLACE FUNCTION audit.retire(p_partitions jsonb, p_reason text DEFAULT 'archive')
RETURNS SETOF audit.retired_partition
LANGUAGE plpgsql
SET timezone = 'UTC' SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres'
SET extra_float_digits = 1 SET bytea_output = 'hex' AS $$
-- p_partitions: [{"suffix": ..., "transactions": n, "changes": n, "files": {...}}, ...]; the
-- counts (optional) are what the archive holds. Refuses, changing nothing, unless every row of
-- every named pair is sealed, the counts match and no hold covers them.
DECLARE
    v_sealed xid8 := coalesce((SELECT s.txid_to FROM audit.seal AS s ORDER BY s.seq DESC LIMIT 1), '0');
    p jsonb;
    a record;
    v_change regclass;
    v_tx regclass;
    v_parts oid[] := '{}';
    v_ids bigint[] := '{}';
    v_id bigint;
    v_held text;
    v_committed timestamptz;
    v_tables oid[];
    b record;
BEGIN
    IF p_reason NOT IN ('archive', 'retention') THEN
        RAISE EXCEPTION 'unknown reason %: archive or retention', p_reason USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The order capture takes these locks in: writers in progress finish, none deadlocks.
    LOCK TABLE audit.change, audit.transaction IN ACCESS EXCLUSIVE MODE;
    FOR p IN SELECT * FROM pg_catalog.jsonb_array_elements(p_partitions) LOOP
        SELECT * INTO a FROM audit.archivable('infinity', p ->> 'suffix');
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the log has no partition pair with suffix %', p ->> 'suffix'
                USING ERRCODE = 'undefined_table', HINT = 'pgaudit-tool partitions lists them.';
        END IF;
        IF a.unsealed > 0 THEN
            RAISE EXCEPTION 'partitions audit.change_p% and audit.transaction_p% hold % rows not sealed yet', a.suffix, a.suffix, a.unsealed
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Seal them first (pgaudit-tool maintain); a transaction still running keeps the rows after it unsealed.';
        END IF;
        IF (p ? 'changes' AND (p ->> 'changes')::bigint <> a.changes)
           OR (p ? 'transactions' AND (p ->> 'transactions')::bigint <> a.transactions) THEN
            RAISE EXCEPTION 'partitions audit.change_p% and audit.transaction_p% hold % changes and % transactions, the archive % and %: they changed since they were archived',
                            a.suffix, a.suffix, a.changes, a.transactions, p ->> 'changes', p ->> 'transactions'
                USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Archive them again.';
        END IF;
        v_change := pg_catalog.format('audit.%I', 'change_p' || a.suffix)::regclass;
        v_tx := pg_catalog.format('audit.%I', 'transaction_p' || a.suffix)::regclass;
        v_held := a.held_by;
        IF v_held IS NOT NULL THEN
            RAISE EXCEPTION 'partitions audit.change_p% and audit.transaction_p% are under a legal hold: %', a.suffix, a.suffix, v_held
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Release the hold (pgaudit-tool hold --release ID) or wait until it ends.';
        END IF;
        EXECUTE pg_catalog.format('SELECT pg_catalog.max(x.committed_at) FROM %s AS x', v_tx) INTO v_committed;
        EXECUTE pg_catalog.format('SELECT coalesce(pg_catalog.array_agg(DISTINCT c.relid), ''{}'') FROM %s AS c', v_change) INTO v_tables;
        INSERT INTO audit.retired_partition (suffix, lower, upper, transactions, changes, txid_min, txid_max,
                                             committed_max, tables, files, reason)
        VALUES (a.suffix, a.lower, a.upper, a.transactions, a.changes, a.txid_min, a.txid_max,
                v_committed, v_tables, p -> 'files', p_reason)
        RETURNING id INTO v_id;
        v_parts := v_parts || v_change::oid || v_tx::oid;
        v_ids := v_ids || v_id || v_id;
    END LOOP;
    -- Blocks with rows in the dropped partitions: those left with no row in the log are retired
    -- whole; the others keep the digests of their dropped rows.
    FOR b IN SELECT s.seq, s.txid_from, s.txid_to FROM audit.seal AS s
              WHERE NOT EXISTS (SELECT FROM audit.retired_block AS r WHERE r.seq = s.seq)
                AND EXISTS (SELECT FROM audit.retired_partition AS r
                             WHERE r.id = ANY (v_ids) AND r.txid_min < s.txid_to AND r.txid_max >= s.txid_from)
              ORDER BY s.seq LOOP
        CONTINUE WHEN NOT EXISTS (SELECT FROM audit._row_digests(b.txid_from, b.txid_to, v_parts));
        IF EXISTS (SELECT FROM audit.transaction AS x WHERE x.txid >= b.txid_from AND x.txid < b.txid_to AND x.tableoid <> ALL (v_parts))
           OR EXISTS (SELECT FROM audit.change AS c WHERE c.txid >= b.txid_from AND c.txid < b.txid_to AND c.tableoid <> ALL (v_parts))
           OR EXISTS (SELECT FROM audit.journal AS j WHERE j.txid >= b.txid_from AND j.txid < b.txid_to) THEN
            INSERT INTO audit.retired_row (kind, txid, id, digest, retirement)
            SELECT d.kind, d.txid, d.id, d.digest, v_ids[pg_catalog.array_position(v_parts, d.partition)]
              FROM audit._row_digests(b.txid_from, b.txid_to, v_parts) AS d;
        ELSE
            INSERT INTO audit.retired_block (seq, retirement) VALUES (b.seq, v_ids[pg_catalog.array_length(v_ids, 1)]);
        END IF;
    END LOOP;
    FOR i IN 1 .. coalesce(pg_catalog.array_length(v_parts, 1), 0) LOOP
        EXECUTE pg_catalog.format('DROP TABLE %s', v_parts[i]::regclass);
    END LOOP;
    FOR i IN 1 .. coalesce(pg_catalog.array_length(v_ids, 1), 0) BY 2 LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION IF EXISTS audit.%I()',
                                  '_mark_commit_p' || (SELECT r.suffix FROM audit.retired_partition AS r WHERE r.id = v_ids[i]));
    END LOOP;
    RETURN QUERY SELECT * FROM audit.retired_partition AS r WHERE r.id = ANY (v_ids) ORDER BY r.id;
END
$$;

COMMENT ON FUNCTION audit.retire(jsonb, text) IS
    'Drops partition pairs of the log in one transaction (archive --drop, retention): refuses, changing nothing, a pair with rows not sealed, whose counts differ from the archive''s, or under a legal hold. Records each in audit.retired_partition and keeps the hash chain provable (audit.retired_block, audit.retired_row). Takes an ACCESS EXCLUSIVE lock on the log for its duration.';

REVOKE ALL ON FUNCTION audit.retire(jsonb, text) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit.retired(
    p_table regclass DEFAULT NULL, p_since timestamptz DEFAULT NULL,
    p_until timestamptz DEFAULT NULL, p_txid xid8 DEFAULT NULL)
RETURNS TABLE (id bigint, lower timestamptz, upper timestamptz, transactions bigint,
               changes bigint, txid_min xid8, txid_max xid8, committed_max timestamptz,
               tables text[], reason text, archive text, retired_at timestamptz, retired_by text)
LANGUAGE sql STABLE AS $$
    -- The partition pairs that left the log and may have held changes of p_table, captured in
    -- [p_since, p_until), of transaction p_txid (each null: any): what a reading of the live log
    -- alone misses. A change was captured after its transaction started (at or after the
    -- pair's lower bound) and before it committed (at or before committed_max).
    SELECT r.id, r.lower, r.upper, r.transactions, r.changes, r.txid_min, r.txid_max,
           r.committed_max,
           ARRAY(SELECT coalesce(audit._qualified(t::regclass), t::text)
                   FROM pg_catalog.unnest(r.tables) AS t ORDER BY 1),
           r.reason, r.files ->> 'archive', r.retired_at, r.retired_by
      FROM audit.retired_partition AS r
     WHERE r.changes > 0
       AND (p_table IS NULL OR p_table::oid = ANY (r.tables))
       AND (p_since IS NULL OR r.committed_max >= p_since)
       AND (p_until IS NULL OR r.lower < p_until)
       AND (p_txid IS NULL OR p_txid BETWEEN r.txid_min AND r.txid_max)
     ORDER BY r.id
$$;

COMMENT ON FUNCTION audit.retired(regclass, timestamptz, timestamptz, xid8) IS
    'The partition pairs of the log dropped by archive --drop or retention (audit.retired_partition) that may have held changes of a table, captured in [since, until), or of a transaction (each null: any): their range of transaction start times, row counts, transaction ids, latest commit, tables, why they left (archive, retention) and the archive directory they went to (null: dropped without an archive), when and by whom. What history read from the live log alone misses.';


CREATE OR REPLACE FUNCTION audit._refuse_retired(
    p_doing text, p_advice text, p_table regclass, p_since timestamptz, p_until timestamptz,
    p_txid xid8)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
-- Raises when changes that p_doing (a revert) needs may have left the log (audit.retired): it
-- reads the live log only, and would otherwise do part of what it was asked without a word.
-- p_advice ends the hint.
DECLARE
    r record;
BEGIN
    SELECT pg_catalog.count(*) AS pairs, pg_catalog.max(x.committed_max) AS committed_max,
           pg_catalog.string_agg(DISTINCT x.archive, ', ') AS archives,
           pg_catalog.bool_or(x.archive IS NULL) AS unarchived
      INTO r FROM audit.retired(p_table, p_since, p_until, p_txid) AS x;
    IF r.pairs > 0 THEN
        RAISE EXCEPTION '% needs changes that may have left the log: % partition pair(s) holding changes committed up to % were dropped', p_doing, r.pairs, audit._time_text(r.committed_max)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.concat_ws(' ',
                      CASE WHEN r.archives IS NOT NULL THEN pg_catalog.format('They were archived to %s (history --archive DIR shows them).', r.archives) END,
                      CASE WHEN r.unarchived THEN 'Some were dropped without an archive (retention).' END,
                      'pgaudit-tool partitions --retired (audit.retired()) lists them.', p_advice);
    END IF;
END
$$;

COMMENT ON FUNCTION audit._refuse_retired(text, text, regclass, timestamptz, timestamptz, xid8) IS
    'Internal. Raises a clear error naming the archive when changes an operation on the live log needs may have left it (audit.retired).';


CREATE OR REPLACE FUNCTION audit.hold(p_table regclass DEFAULT NULL, p_until timestamptz DEFAULT NULL, p_reason text DEFAULT NULL)
RETURNS audit.hold
LANGUAGE plpgsql AS $$
-- Places a legal hold on a table's history, or on the whole log (p_table null).
DECLARE
    v_row audit.hold;
BEGIN
    IF p_until IS NOT NULL AND p_until <= pg_catalog.now() THEN
        RAISE EXCEPTION 'the hold would end at %, which is not in the future', p_until USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO audit.hold (relid, table_name, until, reason)
    VALUES (p_table, audit._qualified(p_table), p_until, p_reason)
    RETURNING * INTO v_row;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION audit.hold(regclass, timestamptz, text) IS
    'Places a legal hold: until it is released (audit.release_holds) or ends (p_until), archive --drop and retention refuse to drop partitions holding changes of the table (null: any partition). Returns the hold.';

REVOKE ALL ON FUNCTION audit.hold(regclass, timestamptz, text) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit.release_holds(p_ids bigint[] DEFAULT NULL, p_table regclass DEFAULT NULL, p_all boolean DEFAULT false)
RETURNS SETOF audit.hold
LANGUAGE plpgsql AS $$
-- Releases active holds: those with the given ids, those on a table, or those on the whole log.
BEGIN
    IF pg_catalog.num_nonnulls(p_ids, p_table) + p_all::int <> 1 THEN
        RAISE EXCEPTION 'name the holds to release: by id, by table, or the holds on the whole log'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_ids IS NOT NULL AND EXISTS (SELECT FROM pg_catalog.unnest(p_ids) AS i
                                      WHERE NOT EXISTS (SELECT FROM audit.hold AS h WHERE h.id = i AND h.released_at IS NULL)) THEN
        RAISE EXCEPTION 'no active hold with id %', (SELECT pg_catalog.min(i) FROM pg_catalog.unnest(p_ids) AS i
                                                     WHERE NOT EXISTS (SELECT FROM audit.hold AS h WHERE h.id = i AND h.released_at IS NULL))
            USING ERRCODE = 'invalid_parameter_value', HINT = 'pgaudit-tool hold --list shows them.';
    END IF;
    RETURN QUERY
    UPDATE audit.hold AS h SET released_at = pg_catalog.now(), released_by = session_user
     WHERE h.released_at IS NULL
       AND (h.id = ANY (p_ids) OR h.relid = p_table OR (p_all AND h.relid IS NULL))
    RETURNING h.*;
END
$$;

COMMENT ON FUNCTION audit.release_holds(bigint[], regclass, boolean) IS
    'Releases legal holds (audit.hold): by id, every active hold on a table, or (p_all) every active hold on the whole log; returns those released.';

REVOKE ALL ON FUNCTION audit.release_holds(bigint[], regclass, boolean) FROM PUBLIC;
