"""What the node keeps on disk: the SQLite store, the data directory, its lock and state summary."""
