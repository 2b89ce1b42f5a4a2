"""The management store's schema, versioned (Alembic): see management/store.py."""
