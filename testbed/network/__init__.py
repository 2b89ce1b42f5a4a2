"""The network tier's bed: namespaces, the lab's hub and devices, probes and captures."""
