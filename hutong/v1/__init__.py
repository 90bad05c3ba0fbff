"""Generated bindings for package ``hutong.v1`` (from ``proto/hutong/v1``; never edit by hand).

Regenerate with ``scripts/gen_proto.sh``.
"""
