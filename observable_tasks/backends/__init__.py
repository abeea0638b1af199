"""Storage backends for task records and queues (the core does not import them yet)."""
