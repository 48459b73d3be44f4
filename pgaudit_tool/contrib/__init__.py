"""Integrations with application frameworks, one module each, each importing its framework
lazily: ``pgaudit_tool.contrib.django`` (an app, a middleware, ``context()``, ``manage.py
pgaudit``), ``pgaudit_tool.contrib.alembic`` (migration operations) and
``pgaudit_tool.contrib.asgi`` (a Starlette/FastAPI middleware for SQLAlchemy sessions).
Nothing here is imported by ``import pgaudit_tool``.
"""
