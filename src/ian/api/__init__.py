"""The node's HTTP API (FastAPI on uvicorn, inside the node's task group).

``app.create_app`` builds the app and ``app.asgi_app`` puts the ``POST /api/v1/contribute``
fast path in front of it (what the node serves); ``routes.*`` hold the routers (one per area),
``deps`` what handlers are given (the node, admin auth), ``models`` every request and response
body, ``responses`` the JSON error answers, ``auth`` tokens and the admin guard, ``server`` the
embedded uvicorn, ``ws`` the WebSocket event stream on its own port.
"""
