"""The local backend (no Kubernetes): subprocess silos and aggregator over a local store."""
