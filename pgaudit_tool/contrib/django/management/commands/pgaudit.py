"""``manage.py pgaudit [--database ALIAS] [CLI OPTIONS] COMMAND ...``: the pgaudit-tool CLI
against the database of a Django alias (its NAME, USER, PASSWORD, HOST, PORT and libpq OPTIONS).
``--database`` comes before the command; so do the CLI's global options (``-q``, ``-x``,
``--lock-timeout``), except ``-h``/``-v``, which are Django's (help, verbosity).

    python manage.py pgaudit install
    python manage.py pgaudit enable shop_order --exclude card_number
    python manage.py pgaudit --database reporting history shop_order --last 20
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections


class Command(BaseCommand):
    help = "Run the pgaudit-tool CLI against a configured database (--database, default 'default')."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            default="default",
            help="The database alias to run against (default: 'default').",
        )
        parser.add_argument(
            "cli_args",
            nargs=argparse.REMAINDER,
            metavar="COMMAND ...",
            help="A pgaudit-tool command and its options, e.g. 'status' or 'history shop_order'.",
        )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # The CLI's own options before its command (``pgaudit --quiet status``) are not
        # Django's: hand them on instead of refusing them.
        parser = super().create_parser(prog_name, subcommand, **kwargs)

        def parse_args(args: Any = None, namespace: Any = None) -> argparse.Namespace:
            options, unknown = parser.parse_known_args(args, namespace)
            options.cli_args = [*unknown, *(options.cli_args or [])]
            parsed: argparse.Namespace = options
            return parsed

        parser.parse_args = parse_args
        return parser

    def handle(self, *args: Any, **options: Any) -> None:
        from pgaudit_tool.cli import main

        alias = options["database"]
        if alias not in connections:
            raise CommandError(f"no database alias {alias!r} in DATABASES")
        cli_args = [*args, *(options.get("cli_args") or [])]
        try:
            main.main(
                args=["--dsn", conninfo_of(alias), *cli_args],
                prog_name="manage.py pgaudit",
                standalone_mode=True,
            )
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if code:
                raise CommandError(
                    f"pgaudit-tool ended with exit code {code}", returncode=code
                ) from None


def conninfo_of(alias: str) -> str:
    """A libpq connection string for a Django database alias (libpq keywords only)."""
    from psycopg import pq
    from psycopg.conninfo import make_conninfo

    connection = connections[alias]
    if connection.vendor != "postgresql":
        raise CommandError(f"database {alias!r} is not PostgreSQL ({connection.vendor})")
    params = connection.get_connection_params()
    if "database" in params and "dbname" not in params:  # psycopg2's name for it
        params["dbname"] = params.pop("database")
    keywords = {option.keyword.decode() for option in pq.Conninfo.get_defaults()}
    kept = {k: str(v) for k, v in params.items() if k in keywords and v not in (None, "")}
    return make_conninfo("", **kept)
