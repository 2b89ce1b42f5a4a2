"""Small shared helpers: atomic file replacement, reconnect backoff, systemd notification."""
