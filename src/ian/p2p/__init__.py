"""IAN peer-to-peer networking: mutual TLS 1.3, length-prefixed JSON frames, peer policy.

Modules (only :mod:`ian.p2p.transport` touches sockets)::

    errors       the P2P branch of the ian.errors hierarchy
    frames       incremental length-prefixed frame codec (no I/O)
    messages     wire message structs, envelope codec, block/contribution converters (no I/O)
    session      per-connection handshake state machine and admission rules (no I/O)
    transport    the Transport protocol; TCP + pyOpenSSL TLS over anyio streams, cert reload
    memory       the in-memory twin of the TLS transport (tests: no sockets, same identities)
    connection   one peer's framed session and its reader/writer/pinger tasks, send queue
    switch       P2PService: admission, peer registry, requests, limits, scores, bans, on()
    pex          PeerExchange: seeds, peer exchange, dialling, redial backoff (a service)
    peer_book    peer_scores.json: scores, bans, addresses (also read offline by the CLI)
    peer_events  the listener that publishes peer events on the event bus

The node wires :class:`ian.p2p.switch.P2PService` and its services (see its module docstring).
Nothing is imported here, so the CLI can read the peer book without loading the TLS stack.
"""
