"""Certificate admin route: make the running node use the certificate now in ``certs/``.

Include with ``app.include_router(router)``. Expects ``request.app.state.node`` to have
``reload_certificates() -> CertInfo`` (re-reads ``certs/``, checks the pair against the node
identity and hands it to the P2P layer; raises :class:`ian.errors.IdentityError` and keeps the
running certificate when the files are unusable). ``ian certs rotate`` calls this after
swapping the files in.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from ian.api.auth import require_admin
from ian.certs import cert_doc
from ian.errors import IdentityError, RequestError, UnavailableError

router = APIRouter()


@router.post(
    "/api/v1/admin/certs/reload",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    summary="Reload the P2P TLS certificate from the data directory",
)
async def reload_certificates(request: Request) -> dict[str, Any]:
    """Re-read ``certs/`` and use it for new P2P connections; answers the certificate now in use.

    An unusable pair is an error (the node keeps the certificate it was using).
    """
    node = request.app.state.node
    reload = getattr(node, "reload_certificates", None)
    if reload is None:
        raise UnavailableError("this node cannot reload certificates yet", fix="restart the node")
    try:
        info = reload()
    except IdentityError as exc:
        raise RequestError(
            f"the certificate in certs/ is unusable: {exc.message}",
            code="certificate_unusable",
            fix=exc.fix,
        ) from None
    return cert_doc(info)
