# The device serves nothing: no systemd-resolved (it listens on port 53 and,
# with LLMNR, on the network) and no machined. Name resolution is not needed:
# the hub endpoint and the services are addresses from provisioning.
PACKAGECONFIG:remove:twelvefactor = "resolved nss-resolve machined nss-mymachines"
