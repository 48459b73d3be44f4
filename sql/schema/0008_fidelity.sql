-- pgaudit_tool schema revision 0008: fidelity (issue 15).
--
-- No table changes. The revision exists so that an upgrade re-applies the functions of
-- sql/functions/, which change:
--   * audit.revert and audit.revert_script take p_fire_triggers: a revert switches the
--     application triggers of the tables it writes off (audit.revert_triggers) unless told to
--     fire them, so rows come back exactly as recorded;
--   * every capture function is regenerated in this version's form.
SELECT 1;
