"""Package data: the model price snapshot (see gateway.pricing)."""
