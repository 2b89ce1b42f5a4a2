"""The test bed: what the tests, the benchmarks and the demo stand the product up on.

Not shipped. `stack` runs the cloud side on this machine (on the product's
services_stack, the hub's own start-up), `hostagent` a real agent beside it,
`probe` a blocking MQTT client for fake devices, and `demo` the main job
(scripts/demo); `boot` runs the device image in QEMU beside the shipped hub in
a network namespace of its own (the boot tier, bench/device_rss.py,
bench/update_install.py); `network` builds a lab of namespaces, veth and
WireGuard around the layer's firewall and the agent on this machine (the
network tier); `proc` is the one way they run a command and stop a process.
Installed in the development environment (`pip install -e .` at the top),
beside the reference-image builder `refimage`.
"""
