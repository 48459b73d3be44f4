-- pgaudit_tool schema revision 0005: watch. Alerts raised by the watcher and its durable cursor.
--
-- The watcher (pgaudit-tool watch) reads committed transactions from the log, runs the
-- detectors over them, and stores what they find in audit.alert, in one transaction with the
-- move of its cursor, so that a watcher killed at any instant neither skips a committed change
-- nor raises the same alert twice. "New" is defined by visibility, not by ids: the cursor is the
-- snapshot the last pass read the log with, and the next pass evaluates every transaction
-- visible to it now that was not visible in that snapshot (a long transaction that commits
-- after others with higher ids is still new). See functions/08_watch.sql.

CREATE TABLE audit.watch_cursor (
    name       text        PRIMARY KEY CHECK (name <> ''),
    snapshot   pg_snapshot NOT NULL,
    moved_at   timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    moved_by   text        NOT NULL DEFAULT session_user,
    watcher    text,
    evaluated  bigint      NOT NULL DEFAULT 0,
    chain_checked_at timestamptz
);

COMMENT ON TABLE audit.watch_cursor IS
    'Durable position of the watcher: every transaction visible in snapshot has been evaluated. One row per watcher name (one watcher per database by default, named ''default'').';
COMMENT ON COLUMN audit.watch_cursor.name IS 'Watcher name (''default'').';
COMMENT ON COLUMN audit.watch_cursor.snapshot IS 'The snapshot the last pass read the log with: the transactions visible in it are done, the others are pending.';
COMMENT ON COLUMN audit.watch_cursor.moved_at IS 'When the cursor last moved (end of the last pass that found something, or the first one).';
COMMENT ON COLUMN audit.watch_cursor.moved_by IS 'Login role of the watcher that moved it.';
COMMENT ON COLUMN audit.watch_cursor.watcher IS 'host:pid of the watcher process that moved it.';
COMMENT ON COLUMN audit.watch_cursor.evaluated IS 'Changes evaluated by this cursor since it was created.';
COMMENT ON COLUMN audit.watch_cursor.chain_checked_at IS 'When this watcher last verified the hash chain (the integrity detector''s verify_interval counts from it).';

REVOKE ALL ON audit.watch_cursor FROM PUBLIC;


CREATE TABLE audit.alert (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    raised_at        timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    rule             text        NOT NULL,
    detector         text        NOT NULL,
    severity         text        NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    at               timestamptz,
    table_name       text,
    relid            oid,
    actor            text,
    db_user          text,
    role             text,
    client_addr      inet,
    application_name text,
    txids            xid8[]      NOT NULL DEFAULT '{}',
    changes          bigint,
    summary          text        NOT NULL,
    revert           text,
    detail           jsonb,
    fingerprint      text        NOT NULL,
    actions          text[]      NOT NULL DEFAULT '{}',
    actions_done_at  timestamptz,
    action_errors    text[],
    acked_at         timestamptz,
    acked_by         text
);

COMMENT ON TABLE audit.alert IS
    'Findings of the watcher (pgaudit-tool watch): one row per alert, raised once. Acknowledge with audit.ack_alerts() (pgaudit-tool alerts --ack).';
COMMENT ON COLUMN audit.alert.id IS 'Alert id.';
COMMENT ON COLUMN audit.alert.raised_at IS 'When the watcher stored the alert.';
COMMENT ON COLUMN audit.alert.rule IS 'Name of the rule that raised it (a detector''s own name for its default rule).';
COMMENT ON COLUMN audit.alert.detector IS 'Detector: mass_change, destructive, sensitive_column, new_actor, off_hours, burst, new_client or integrity.';
COMMENT ON COLUMN audit.alert.severity IS 'info, warning or critical.';
COMMENT ON COLUMN audit.alert.at IS 'Commit time of the last transaction involved (for integrity: when the problem was found).';
COMMENT ON COLUMN audit.alert.table_name IS 'Schema-qualified name of the table involved, when one is.';
COMMENT ON COLUMN audit.alert.relid IS 'OID of that table.';
COMMENT ON COLUMN audit.alert.actor IS 'Application user involved (pgaudit.actor), when set.';
COMMENT ON COLUMN audit.alert.db_user IS 'Login role involved.';
COMMENT ON COLUMN audit.alert.role IS 'Role that executed the statements (current_user), when one.';
COMMENT ON COLUMN audit.alert.client_addr IS 'Client address involved (null over a Unix socket).';
COMMENT ON COLUMN audit.alert.application_name IS 'application_name involved.';
COMMENT ON COLUMN audit.alert.txids IS 'Transactions behind the finding.';
COMMENT ON COLUMN audit.alert.changes IS 'Number of changed rows behind the finding.';
COMMENT ON COLUMN audit.alert.summary IS 'The finding in one sentence.';
COMMENT ON COLUMN audit.alert.revert IS 'A pgaudit-tool command that undoes exactly the changes behind the finding (a dry run: remove --dry-run to apply).';
COMMENT ON COLUMN audit.alert.detail IS 'Detector-specific facts (thresholds, baseline figures, keys, values).';
COMMENT ON COLUMN audit.alert.fingerprint IS 'What makes two findings the same alert: an alert is never stored twice while an unacknowledged one has the same rule and fingerprint.';
COMMENT ON COLUMN audit.alert.actions IS 'The rule''s responses (exec:..., webhook:..., notify:...) to run for this alert.';
COMMENT ON COLUMN audit.alert.actions_done_at IS 'When the responses were run (null: pending; a watcher restarted after a crash runs them).';
COMMENT ON COLUMN audit.alert.action_errors IS 'Responses that failed, one sentence each.';
COMMENT ON COLUMN audit.alert.acked_at IS 'When the alert was acknowledged (null: open).';
COMMENT ON COLUMN audit.alert.acked_by IS 'Who acknowledged it.';

CREATE UNIQUE INDEX alert_open_fingerprint_idx ON audit.alert (rule, fingerprint) WHERE acked_at IS NULL;
CREATE INDEX alert_raised_idx ON audit.alert (raised_at);
CREATE INDEX alert_pending_idx ON audit.alert (id) WHERE actions_done_at IS NULL;

REVOKE ALL ON audit.alert FROM PUBLIC;
