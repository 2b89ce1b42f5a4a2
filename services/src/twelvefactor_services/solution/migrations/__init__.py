"""The solution store's schema, versioned (Alembic): see twelvefactor_services.database."""
