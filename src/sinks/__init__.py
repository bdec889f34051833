"""sinks: where the bus's events go (JSONL logs, artifacts, query index, NATS)."""

__all__: list[str] = []
