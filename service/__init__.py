"""Serving side: the model, the CLI and benchmarks (later the engine, gateway and SDK)."""
