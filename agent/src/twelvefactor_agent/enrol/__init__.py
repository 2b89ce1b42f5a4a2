"""Enrolment on the device: its keys made where they are used, only public parts sent.

``ec`` (P-256 ECDSA and X25519, *pure*), ``der`` (the certificate request,
the private key file and reading a certificate, *pure*), ``datafiles``
(network.conf and agent.toml, *pure*: the one renderer, which refimage's
provisioning uses too), ``bundle`` (the request and the response and their
checks, *pure*), ``device`` (the files on /data). The layer's image has no
``cryptography`` and no ``openssl`` command, so the key and the request are
made with the standard library (docs/decisions.md, "Enrolment keys made with
the standard library").
"""
