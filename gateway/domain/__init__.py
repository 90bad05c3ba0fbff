"""Pure domain rules: identity numbers, division codes, records, linkage, policy, events.

Nothing here imports grpc, aiohttp or SQL.
"""
