"""The write path over chain and storage: intake, the sequencer, applying blocks, start-up
recovery and replication between nodes."""
