# twelvefactor distribution: the device needs `wg` only (twelvefactor-link sets
# the tunnel's persistent keepalive with it; systemd-networkd sets up the
# tunnel). No wg-quick and no bash completion, each of which pulls bash in.
PACKAGECONFIG:twelvefactor = ""
