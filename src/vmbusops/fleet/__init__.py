"""The fleet: one controller, one agent per Hyper-V host, NATS JetStream between them.

See ``docs/adr/0007-fleet.md`` for the design: the streams, buckets and subjects
(:mod:`.names`), the messages (:mod:`.messages`), the broker interface (:mod:`.broker`), who owns
what, and what happens on each fault.
"""
