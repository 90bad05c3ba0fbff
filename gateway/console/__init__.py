"""The hub's HTTP console: probes, metrics, token keys and the CRL (pages follow)."""
