"""Property-based fuzzing of a real node's HTTP API from its own OpenAPI document
(schemathesis): no request, however odd, gets a 5xx, and every answer matches what the
document says (status code, content type, headers, body schema). Bounded and reproducible:
25 examples per operation, a fixed seed, well under a minute."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.nodes import NETWORK_ENV

pytestmark = pytest.mark.integration

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)
#: rate limits out of the way: the fuzzer sends hundreds of requests from one address
UNLIMITED = {
    "IAN_CLIENT_RATE": "100000",
    "IAN_CLIENT_BURST": "100000",
    "IAN_CONTRIBUTOR_RATE": "100000",
    "IAN_CONTRIBUTOR_BURST": "100000",
}
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_every_operation_answers_as_documented(ian_nodes) -> None:
    node = ian_nodes.start(env={**NETWORK_ENV, **UNLIMITED}, wait=("api", "p2p"))
    token = (node.data_dir / "api_token").read_text().strip()
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            node.api_url + "/api/v1/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            "25",
            "--seed",
            "20261205",
            "--header",
            f"Authorization: Bearer {token}",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    summary = run.stdout[-4000:]
    assert run.returncode == 0, summary
    assert "passed" in summary and "failures" not in summary.lower().split("summary")[-1]
    # The fuzzing reached the node and it is still healthy.
    assert node.get("/health").status_code == 200
    assert not node.has_msg("unexpected error serving")
