"""Alembic environment for the egresswatch store.

egresswatch runs migrations itself (``open_store`` / ``egresswatch db upgrade``)
and hands alembic an open connection in ``config.attributes["connection"]``;
there is no alembic.ini to keep in sync with the user's database URL.
"""

from __future__ import annotations

from alembic import context

from egresswatch.store.schema import metadata

target_metadata = metadata


def run_migrations_online() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place: batch mode copies the table
        # (https://alembic.sqlalchemy.org/en/latest/batch.html)
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():  # pragma: no cover - egresswatch never runs offline
    raise SystemExit("egresswatch migrations run online only: use `egresswatch db upgrade`")
run_migrations_online()
