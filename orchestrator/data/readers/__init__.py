"""One reader per real data-set layout; `orchestrator.data.layouts` holds the registry."""
