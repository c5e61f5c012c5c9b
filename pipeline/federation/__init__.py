"""The federation runtime: who may talk to whom, over what, and what is recorded.

A coordinator (an HTTPS server with mutual TLS) and sites that only open outbound
connections; analysts submit jobs. Identity is the certificate a federation CA issued
(:mod:`pipeline.federation.provision`), read back from the TLS handshake
(:mod:`pipeline.federation.tls`) and checked against the enrolment list in the
configuration (:mod:`pipeline.federation.config`) and the federation roster the CA
signed (:mod:`pipeline.federation.roster`). Every contribution, round and
result is written to a hash-chained audit log (:mod:`pipeline.federation.audit`).

The runtime is the only place that turns an analysis' declared layout into ring
vectors, masks, signs, moves and stores them: the coordinator's job engine
(:mod:`.coordinator`) behind its HTTPS API (:mod:`.api`), the site agent
(:mod:`.agent`), the analyst's client (:mod:`.analyst`), the round vocabulary both ends
compute alike (:mod:`.rounds`, :mod:`.job_spec`), the byte formats (:mod:`.wire`,
:mod:`.secagg_wire`, :mod:`.transport`), persistence (:mod:`.store`), and the
one-machine runners (:mod:`.in_memory`, :mod:`.localhost`, with the baselines only
they can compute, :mod:`.baselines`).
"""
