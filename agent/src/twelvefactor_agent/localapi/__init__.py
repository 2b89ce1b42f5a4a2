"""The local API: server, connection protocol, call table, client, calls by service name."""
