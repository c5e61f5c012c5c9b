"""Secure aggregation: the coordinator learns the sum of the sites' vectors, nothing else.

Bonawitz et al. (CCS 2017) SecAgg, with the SecAgg+ neighbour graph as an option, over
vectors that :mod:`pipeline.encoding` puts in Z_(2^32) or Z_(2^64): AES-128-CTR or
ChaCha20 masks, as the job names (:mod:`.prg`, :mod:`.masks`, :mod:`.chacha20`), the
coordinator's vectorized kernels (:mod:`.kernels`; R64 elements as uint32 pairs on
accelerators, :mod:`.pairs`), X25519/HKDF/AES-GCM keys
(:mod:`.keys`), Shamir shares (:mod:`.shamir`), the neighbour graph (:mod:`.neighbours`),
the protocol's stages, parameters and messages (:mod:`.messages`), the site's and the
coordinator's state machines (:mod:`.client`, :mod:`.server`) and an in-memory driver
(:mod:`.driver`).

:func:`pipeline.secagg.driver.simulate_secure_sum` runs the real protocol for n simulated
sites in memory. The package re-exports nothing: import from the module that holds a
name, so a JAX-free module (messages, keys, Shamir shares, neighbour graph) loads
without the JAX kernels.
"""
