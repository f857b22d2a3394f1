"""Operator maintenance of a data directory: backup, restore, retention, resync, certificate
rotation."""
