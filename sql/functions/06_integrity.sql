-- pgaudit_tool: tamper evidence.
--
-- The log is sealed in blocks, off the write path: audit.seal() hashes every change, transaction
-- and journal record of the transactions that finished since the last seal and chains the block
-- to the previous one. A block covers a contiguous range of transaction ids, [txid_from, txid_to),
-- where txid_to is the oldest transaction still running when the block was sealed: every
-- transaction below it has finished, so its rows can never change again, and concurrent writers
-- never wait for sealing (no hot row, no lock on the write path).
--
--   hash(block) = sha256(prev_hash || sha256(D(T_1) || ... || D(C_1) || ... || D(J_1) || ...))
--   D(row)      = sha256(utf8(letter || record text of the row's columns))
--
-- with transaction records (T) in txid order, then change records (C) in (txid, id) order, then
-- journal records (J) in (txid, id) order; the columns and the text settings are fixed
-- (docs/chain.md). The journal (audit.journal, written by the trigger audit._journal on
-- the registry, layout and history-break tables) carries every version of those rows, so the
-- chain covers what gives history its meaning, while those tables stay updatable in place.
--
-- audit.verify() recomputes every block inside the database; it is a convenience, not a proof
-- against whoever controls the database (a superuser can replace it). `pgaudit-tool verify
-- --against` recomputes the chain in the client from the raw rows (pgaudit_tool/chain.py) and
-- checks it against a head kept outside the database (pgaudit-tool checkpoint).

CREATE OR REPLACE FUNCTION audit._relid_as_captured(p_relid oid, p_id bigint) RETURNS oid
LANGUAGE plpgsql STABLE STRICT AS $$
-- The relid a change row had when it was captured: audit.reattach() rewrites the relids of a
-- moved database and records each rewrite in audit.relocation; undone here, newest first, for
-- the rows that existed then (id <= last_change).
DECLARE
    r record;
BEGIN
    FOR r IN SELECT l.old_relid, l.new_relid FROM audit.relocation AS l
              WHERE l.last_change >= p_id ORDER BY l.id DESC LOOP
        IF p_relid = r.new_relid THEN
            p_relid := r.old_relid;
        END IF;
    END LOOP;
    RETURN p_relid;
END
$$;

COMMENT ON FUNCTION audit._relid_as_captured(oid, bigint) IS
    'Internal. The relid of a change row as captured, before the relocations of audit.reattach() that rewrote it (audit.relocation); what the hash chain covers.';


CREATE OR REPLACE FUNCTION audit._row_digests(p_from xid8, p_to xid8, p_partitions oid[] DEFAULT NULL)
RETURNS TABLE (kind "char", txid xid8, id bigint, digest bytea, partition oid)
LANGUAGE sql STABLE AS $$
-- D(row) of the transaction and change rows of the transactions in [p_from, p_to) (only of the
-- given partitions, when given), with the keys that order them in a block. The caller fixes
-- the output settings (audit._block_digest, audit.retire).
    SELECT 'T'::"char", x.txid, 0::bigint,
           pg_catalog.sha256(pg_catalog.convert_to('T' || ROW(
               x.txid, x.started_at, x.db_user, x.application_name, x.client_addr,
               x.client_port, x.backend_pid, x.actor, x.context, x.committed_at)::text, 'UTF8')),
           x.tableoid
      FROM audit.transaction AS x
     WHERE x.txid >= p_from AND x.txid < p_to AND (p_partitions IS NULL OR x.tableoid = ANY (p_partitions))
    UNION ALL
    SELECT 'C'::"char", c.txid, c.id,
           pg_catalog.sha256(pg_catalog.convert_to('C' || ROW(
               c.id, c.txid,
               -- The relid as captured (before audit.reattach() rewrote it): only rows up to
               -- the last relocation pay for the lookup.
               CASE WHEN c.id <= (SELECT pg_catalog.max(l.last_change) FROM audit.relocation AS l)
                    THEN audit._relid_as_captured(c.relid, c.id) ELSE c.relid END,
               c.schema_name, c.table_name, c.op, c.role,
               c.statement_at, c.clock_at, c.pk, c.old, c.new)::text, 'UTF8')),
           c.tableoid
      FROM audit.change AS c
     WHERE c.txid >= p_from AND c.txid < p_to AND (p_partitions IS NULL OR c.tableoid = ANY (p_partitions))
$$;

COMMENT ON FUNCTION audit._row_digests(xid8, xid8, oid[]) IS
    'Internal. Digests D(row) (docs/chain.md) of the transaction (T) and change (C) rows of the transactions in [p_from, p_to), optionally of some partitions only, with their ordering keys and partition. The caller fixes the output settings.';


CREATE OR REPLACE FUNCTION audit._block_digest(p_from xid8, p_to xid8, OUT transactions bigint, OUT changes bigint, OUT journal bigint, OUT digest bytea)
LANGUAGE sql STABLE
-- Row texts must not depend on the session: fixed output settings.
SET timezone = 'UTC' SET datestyle = 'ISO, YMD' SET intervalstyle = 'postgres'
SET extra_float_digits = 1 SET bytea_output = 'hex'
AS $$
    -- The rows in the log, and the digests of rows dropped since (audit.retired_row).
    WITH r AS (
        SELECT d.kind, d.txid, d.id, d.digest FROM audit._row_digests(p_from, p_to) AS d
        UNION ALL
        SELECT g.kind, g.txid, g.id, g.digest FROM audit.retired_row AS g
         WHERE g.txid >= p_from AND g.txid < p_to
    )
    SELECT (SELECT pg_catalog.count(*) FROM r WHERE r.kind = 'T'),
           (SELECT pg_catalog.count(*) FROM r WHERE r.kind = 'C'),
           (SELECT pg_catalog.count(*) FROM audit.journal AS j WHERE j.txid >= p_from AND j.txid < p_to),
           pg_catalog.sha256(coalesce(
               (SELECT pg_catalog.string_agg(r.digest, ''::bytea
                                             ORDER BY CASE r.kind WHEN 'T' THEN 1 ELSE 2 END, r.txid, r.id) FROM r), ''::bytea)
             || coalesce(
               (SELECT pg_catalog.string_agg(pg_catalog.sha256(pg_catalog.convert_to('J' || ROW(
                           j.id, j.txid, j.relation, j.op, j.written_at, j.old, j.new)::text, 'UTF8')),
                       ''::bytea ORDER BY j.txid, j.id)
                  FROM audit.journal AS j WHERE j.txid >= p_from AND j.txid < p_to), ''::bytea))
$$;

COMMENT ON FUNCTION audit._block_digest(xid8, xid8) IS
    'Internal. Counts and digest of the transaction, change and journal rows of the transactions in [p_from, p_to), in canonical order and text (docs/chain.md).';


CREATE OR REPLACE FUNCTION audit._journal() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- Images must not depend on the session (to_jsonb renders timestamptz in the session's zone).
SET timezone = 'UTC' SET intervalstyle = 'postgres' SET extra_float_digits = 1 AS $$
-- Appends the row version just written to a registry, layout, history-break, relocation,
-- retirement or hold table to audit.journal, with the writing transaction's id. Rare writes
-- only: never on the capture path.
BEGIN
    IF TG_OP = 'UPDATE' AND OLD IS NOT DISTINCT FROM NEW THEN
        RETURN NULL;
    END IF;
    INSERT INTO audit.journal (relation, op, old, new)
    VALUES (TG_TABLE_NAME,
            CASE TG_OP WHEN 'INSERT' THEN 'I' WHEN 'UPDATE' THEN 'U' ELSE 'D' END,
            CASE WHEN TG_OP <> 'INSERT' THEN pg_catalog.to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN pg_catalog.to_jsonb(NEW) END);
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION audit._journal() IS
    'Internal. Row trigger on audit.tracked_table, audit.table_layout, audit.history_break, audit.relocation, audit.retired_partition, audit.retired_block and audit.hold: appends each row version written to audit.journal, which the hash chain covers.';

REVOKE ALL ON FUNCTION audit._journal() FROM PUBLIC;


-- The journal triggers, ENABLE ALWAYS (session_replication_role cannot skip them); only altered
-- when needed, since ALTER TABLE would lock the table.
DO $$
DECLARE
    v_table text;
    v_rel regclass;
BEGIN
    FOREACH v_table IN ARRAY ARRAY['tracked_table', 'table_layout', 'history_break', 'relocation',
                                   'retired_partition', 'retired_block', 'hold'] LOOP
        v_rel := pg_catalog.to_regclass(pg_catalog.format('audit.%I', v_table));
        CONTINUE WHEN v_rel IS NULL;
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger WHERE tgrelid = v_rel AND tgname = 'pgaudit_journal') THEN
            EXECUTE pg_catalog.format('CREATE TRIGGER pgaudit_journal AFTER INSERT OR UPDATE OR DELETE ON %s'
                                      ' FOR EACH ROW EXECUTE FUNCTION audit._journal()', v_rel);
        END IF;
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                        WHERE tgrelid = v_rel AND tgname = 'pgaudit_journal' AND tgenabled = 'A') THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER pgaudit_journal', v_rel);
        END IF;
    END LOOP;
END
$$;


-- Readers verify the chain, so they read the journal too (when the role exists already; a
-- role created by functions/99_finish.sql gets it from there).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgaudit_reader') THEN
        GRANT SELECT ON audit.journal TO pgaudit_reader;
    END IF;
END
$$;


CREATE OR REPLACE FUNCTION audit._settle_commit_times(p_from xid8, p_to xid8) RETURNS bigint
LANGUAGE plpgsql AS $$
-- The commit marker (audit._mark_commit_<partition>) stamps a transaction when its deferred trigger runs:
-- at COMMIT, or earlier when the transaction ran SET CONSTRAINTS ALL IMMEDIATE after its last
-- audited change, or PREPARE TRANSACTION (two-phase commit). With track_commit_timestamp on,
-- the server knows the real commit time: before the transactions of [p_from, p_to) are sealed,
-- their committed_at is moved to it (never earlier: a marker never runs after its commit).
-- Returns how many were moved.
DECLARE
    v_moved bigint;
BEGIN
    IF NOT pg_catalog.current_setting('track_commit_timestamp')::boolean THEN
        RETURN 0;
    END IF;
    UPDATE audit.transaction AS x SET committed_at = c.at
      FROM (SELECT y.txid, y.started_at, pg_catalog.pg_xact_commit_timestamp(pg_catalog.xid(y.txid)) AS at
              FROM audit.transaction AS y
             WHERE y.txid >= p_from AND y.txid < p_to
               -- Only ids of this xid epoch's half: an older 32-bit id may name a newer transaction.
               AND y.txid::text::numeric > pg_catalog.pg_current_xact_id()::text::numeric - 2147483648) AS c
     WHERE x.txid = c.txid AND x.started_at = c.started_at AND c.at > x.committed_at;
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    RETURN v_moved;
END
$$;

COMMENT ON FUNCTION audit._settle_commit_times(xid8, xid8) IS
    'Internal. Before sealing: with track_commit_timestamp on, moves the committed_at of the transactions of a txid range to the server''s own commit time where the commit marker ran early (SET CONSTRAINTS ALL IMMEDIATE, PREPARE TRANSACTION).';

REVOKE ALL ON FUNCTION audit._settle_commit_times(xid8, xid8) FROM PUBLIC;


CREATE OR REPLACE FUNCTION audit.seal() RETURNS audit.seal
LANGUAGE plpgsql AS $$
DECLARE
    v_head audit.seal;
    v_from xid8 := '0';
    v_prev bytea := pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex');
    v_to xid8 := pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot());
    d record;
BEGIN
    -- One sealer at a time; writers are never blocked.
    LOCK TABLE audit.seal IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO v_head FROM audit.seal ORDER BY seq DESC LIMIT 1;
    IF FOUND THEN
        v_from := v_head.txid_to;
        v_prev := v_head.hash;
    END IF;
    IF v_to <= v_from THEN
        RETURN v_head;
    END IF;
    -- The log's tables in capture's order (changes, then transactions), as retire locks them:
    -- settling commit times writes transactions before the digest reads the changes.
    LOCK TABLE ONLY audit.change IN ACCESS SHARE MODE;
    PERFORM audit._settle_commit_times(v_from, v_to);
    d := audit._block_digest(v_from, v_to);
    IF d.transactions = 0 AND d.changes = 0 AND d.journal = 0 AND v_head.seq IS NOT NULL THEN
        RETURN v_head;   -- nothing new has finished since the last block
    END IF;
    INSERT INTO audit.seal (seq, txid_from, txid_to, transactions, changes, journal, prev_hash, hash)
    VALUES (coalesce(v_head.seq, 0) + 1, v_from, v_to, d.transactions, d.changes, d.journal, v_prev,
            pg_catalog.sha256(v_prev || d.digest))
    RETURNING * INTO v_head;
    RETURN v_head;
END
$$;

COMMENT ON FUNCTION audit.seal() IS
    'Seals the transactions finished since the last block into a new block of the hash chain and returns the head of the chain; first, with track_commit_timestamp on, gives them the server''s own commit times (audit._settle_commit_times). Never blocks writers. Run it regularly (pgaudit-tool checkpoint) and keep the head outside the database.';


CREATE OR REPLACE FUNCTION audit.verify(p_head_seq bigint DEFAULT NULL, p_head_hash bytea DEFAULT NULL)
RETURNS TABLE (seq bigint, problem text)
LANGUAGE plpgsql STABLE AS $$
-- Recomputes the whole chain. No row: intact. p_head_seq/p_head_hash: a head kept outside the
-- database (a checkpoint), which must still be in the chain, unchanged.
DECLARE
    s audit.seal;
    d record;
    v_expect_seq bigint := 1;
    v_expect_from xid8 := '0';
    v_prev bytea := pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex');
    v_found_head boolean := false;
    v_last_to xid8 := '0';
BEGIN
    FOR s IN SELECT * FROM audit.seal ORDER BY audit.seal.seq LOOP
        IF s.seq <> v_expect_seq THEN
            seq := s.seq; problem := pg_catalog.format('block %s is missing (found %s next)', v_expect_seq, s.seq);
            RETURN NEXT;
        END IF;
        IF s.txid_from <> v_expect_from THEN
            seq := s.seq; problem := pg_catalog.format('block covers transactions from %s, expected from %s', s.txid_from, v_expect_from);
            RETURN NEXT;
        END IF;
        IF s.prev_hash <> v_prev THEN
            seq := s.seq; problem := 'previous-hash link broken: a block before it was changed or removed';
            RETURN NEXT;
        END IF;
        -- A block whose rows all left the log (audit.retired_block): only its links are checked.
        IF NOT EXISTS (SELECT FROM audit.retired_block AS r WHERE r.seq = s.seq) THEN
            d := audit._block_digest(s.txid_from, s.txid_to);
            IF d.transactions <> s.transactions OR d.changes <> s.changes OR d.journal <> s.journal THEN
                seq := s.seq; problem := pg_catalog.format('rows inserted or deleted: %s transactions, %s changes and %s journal rows now, %s, %s and %s when sealed',
                                                          d.transactions, d.changes, d.journal, s.transactions, s.changes, s.journal);
                RETURN NEXT;
            ELSIF pg_catalog.sha256(s.prev_hash || d.digest) <> s.hash THEN
                seq := s.seq; problem := 'rows edited or reordered: the block''s hash does not match its rows';
                RETURN NEXT;
            END IF;
        END IF;
        IF p_head_seq IS NOT NULL AND s.seq = p_head_seq THEN
            v_found_head := true;
            IF s.hash <> p_head_hash THEN
                seq := s.seq; problem := 'the block differs from the checkpoint kept outside the database';
                RETURN NEXT;
            END IF;
        END IF;
        v_expect_seq := s.seq + 1;
        v_expect_from := s.txid_to;
        v_prev := s.hash;
        v_last_to := s.txid_to;
    END LOOP;
    IF p_head_seq IS NOT NULL AND NOT v_found_head THEN
        seq := p_head_seq; problem := 'the checkpointed block is no longer in the chain: the log was truncated or rewritten';
        RETURN NEXT;
    END IF;
    -- Rows below the sealed horizon that no block accounts for cannot exist: the blocks are
    -- contiguous from 0. (Rows at or above it are simply not sealed yet.)
    RETURN;
END
$$;

COMMENT ON FUNCTION audit.verify(bigint, bytea) IS
    'Recomputes the hash chain of the audit log and returns one row per problem (none: intact): blocks missing, relinked or edited; rows edited, inserted, deleted or reordered. With a checkpoint (seq and hash kept outside the database), also proves that it is still in the chain unchanged.';


CREATE OR REPLACE FUNCTION audit.unsealed() RETURNS TABLE (transactions bigint, changes bigint)
LANGUAGE sql STABLE AS $$
    SELECT (SELECT pg_catalog.count(*) FROM audit.transaction AS x WHERE x.txid >= h.t),
           (SELECT pg_catalog.count(*) FROM audit.change AS c WHERE c.txid >= h.t)
      FROM (SELECT coalesce((SELECT s.txid_to FROM audit.seal AS s ORDER BY s.seq DESC LIMIT 1), '0'::xid8) AS t) AS h
$$;

COMMENT ON FUNCTION audit.unsealed() IS
    'How many transaction and change rows are not sealed yet (newer than the head of the chain).';
