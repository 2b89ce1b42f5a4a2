"""The local API: its Unix-socket server, the client for applications, calls by service name."""
