"""``AuthService``: certificate-bound access tokens for nodes, over mTLS."""

from __future__ import annotations

import grpc

from gateway import errors
from gateway.domain.access import SCOPES, AccessPolicy
from gateway.hub.interceptors import current_call, current_caller
from gateway.hub.tokens import TokenService
from hutong.v1 import auth_pb2, auth_pb2_grpc

__all__ = ["AuthServicer"]


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Issues tokens carrying the scopes the policy grants the calling node."""

    def __init__(self, tokens: TokenService, policy: AccessPolicy) -> None:
        self._tokens = tokens
        self._policy = policy

    async def IssueToken(
        self, request: auth_pb2.IssueTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.IssueTokenResponse:
        """A token bound to the caller's certificate, with the scopes asked for (or all granted)."""
        caller = current_caller()
        call = current_call()
        granted = self._policy.for_node(caller.uri).scopes
        for i, scope in enumerate(request.scopes):
            if scope not in SCOPES:
                raise errors.InvalidArgument(f"unknown scope {scope!r}", reason="SCOPE_UNKNOWN", field=f"scopes[{i}]")
            self._policy.require_scope(caller.uri, scope)
        scopes = frozenset(request.scopes) or granted
        token, claims = self._tokens.issue(caller.uri, scopes, call.thumbprint)
        call.extra.update(scopes=" ".join(sorted(scopes)))
        return auth_pb2.IssueTokenResponse(
            access_token=token,
            token_type="Bearer",  # noqa: S106 - the token scheme, not a secret
            expires_in=self._tokens.lifetime,
            scopes=sorted(claims.scopes),
        )
