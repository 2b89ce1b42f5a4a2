"""The wire protocol of docs/protocol.md, shared by the agent and the services.

One place for what both sides must agree on: the envelope parser every message
goes through (`envelope`), topic names (`topics`), identifier patterns
(`names`) and the job and configuration states (`states`). The services depend
on the agent package for exactly this.
"""
