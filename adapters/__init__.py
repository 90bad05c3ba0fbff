"""Province adapters: legacy exports (GBK CSV, fixed-width, XML, DBF, Excel, JSON Lines) into
``hutong.v1.PersonRecord`` messages, by declarative per-province profiles, with every rejected row
kept with its reason.

The readers and profiles are built under their own issue; this package fixes the place in the
layout (``adapters`` → ``gateway.domain``, ``hutong.v1``) so that nothing else has to move then.
"""
