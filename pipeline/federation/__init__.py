"""The federation runtime: who may talk to whom, over what, and what is recorded.

A coordinator (an HTTPS server with mutual TLS) and sites that only open outbound
connections; analysts submit jobs. Identity is the certificate a federation CA issued
(:mod:`pipeline.federation.provision`), read back from the TLS handshake
(:mod:`pipeline.federation.tls`) and checked against the enrolment list in the
configuration (:mod:`pipeline.federation.config`). Every contribution, round and
result is written to a hash-chained audit log (:mod:`pipeline.federation.audit`).
"""
