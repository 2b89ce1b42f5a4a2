"""The fleet simulator: many simulated devices per process, against the real stack.

``sim`` runs the devices (real MQTT 5 clients over mutual TLS, the agent's
protocol module, payload builders, session state machine and backoff) in one
event loop per worker process; ``watch`` measures what the services make of
them (the registry, the archive, the operator API). ``bench/fleet.py`` puts
the two together and prints the figures (docs/scale.md).
"""
