"""Hutong (互通): the ministry-to-province data exchange gateway for social assistance."""
