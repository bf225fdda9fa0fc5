"""Training plumbing around the families' LightningModules: checkpoints written
atomically and cores started from other runs, exact resume, throughput and MFU,
precision, final validation, checkpoint averaging."""
