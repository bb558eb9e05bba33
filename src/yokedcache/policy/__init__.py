"""Policy layer: keys, TTLs, tags, codec, stats and resilience around a backend."""
