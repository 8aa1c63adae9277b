"""Benchmarks, one module each, all reached through ``bebop bench ...``; figures go to docs/benchmarks.md.

- ``kernels``: the Triton kernels and their torch twins against SGLang's kernel (``sglang_peer``).
- ``tv_loss``: the fused TV and e2e-TV losses against their references.
- ``engine``: the embedded engine, speculation off and on, with the speculative ceiling.
- ``gateway``: the gateway's overhead over direct engine calls, and SGLang's model gateway.
"""
