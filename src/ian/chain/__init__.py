"""The chain as values: contributions, goals, hashing, MMR logs, leaderboards, blocks and the
execution of a contribution against chain state. Pure: no storage, no I/O."""
