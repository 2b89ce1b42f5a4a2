"""The WireGuard hub: one tunnel address per device, spokes isolated from each other.

``plan`` (addresses, the WireGuard and nftables configuration, a device's
provisioning file: pure functions), ``peers`` (the tunnel peers, kept in the
management registry's database), ``service`` (runs the hub in a network
namespace or on a host: WireGuard, firewall, broker, services, NTP), ``cli``.
"""
