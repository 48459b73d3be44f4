"""The audit fixture installs the schema and captures a change."""

from pgaudit_tool import Audit


def test_install_and_capture(audit: Audit) -> None:
    audit.conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    audit.enable("t")
    audit.conn.execute("INSERT INTO t VALUES (1, 'a')")
    rows = list(audit.history("t"))
    assert [(r["op"], r["pk"], r["new"]) for r in rows] == [
        ("INSERT", {"id": 1}, {"id": 1, "v": "a"})
    ]
