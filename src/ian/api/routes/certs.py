"""``POST /api/v1/admin/certs/reload``: make the running node use the certificate now in ``certs/``.

Calls ``node.reload_certificates() -> CertInfo`` (re-reads ``certs/``, checks the pair against the
node identity and hands it to the P2P layer; raises :class:`ian.errors.IdentityError` and keeps
the running certificate when the files are unusable). ``ian certs rotate`` calls this after
swapping the files in. An admin route (:data:`ian.api.deps.ADMIN`).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter

from ian.api import models as m
from ian.api.deps import ADMIN, NodeDep
from ian.certs import CertInfo
from ian.errors import IdentityError, RequestError, UnavailableError

router = APIRouter(tags=["admin"], dependencies=[ADMIN])


@router.post(
    "/api/v1/admin/certs/reload",
    response_model=m.CertificateInfo,
    summary="Reload the P2P TLS certificate from the data directory",
)
async def reload_certificates(node: NodeDep) -> m.CertificateInfo:
    """Re-read ``certs/`` and use it for new P2P connections; answers the certificate now in use.

    An unusable pair is an error (the node keeps the certificate it was using).
    """
    reload: Callable[[], CertInfo] | None = getattr(node, "reload_certificates", None)
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
    return m.CertificateInfo.of(info)
