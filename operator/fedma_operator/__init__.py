"""The fedma Kubernetes operator (kopf). Filled by the operator issue; it imports only
``fedma.spec`` and ``fedma.rounds`` from the core, never torch (an import-linter contract)."""
