"""Solution service v1: ingest device data, deduplicate, forward to receivers without loss."""
