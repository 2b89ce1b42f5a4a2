"""Alembic's entry: run on the connection twelvefactor_services.database.migrate gives."""

from alembic import context

config = context.config
context.configure(
    connection=config.attributes["connection"],
    version_table=config.attributes["version_table"],
    transaction_per_migration=False,
    # the whole upgrade in the caller's transaction, SQLite too (BEGIN IMMEDIATE there):
    # Alembic's SQLite default ends it before the tables are made, so a second copy
    # starting at that moment found the schema stamped and no tables
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
