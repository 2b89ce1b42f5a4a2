"""Alembic's entry (twelvefactor_services.database)."""

from twelvefactor_services.database import run_alembic_env

run_alembic_env()
