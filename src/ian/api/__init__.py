"""The node's HTTP API (FastAPI on uvicorn, inside the node's task group)."""
