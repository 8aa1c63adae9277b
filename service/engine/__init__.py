"""The embedded engine: continuous batching, exact MTP speculative decoding, SGLang's HTTP protocol."""
