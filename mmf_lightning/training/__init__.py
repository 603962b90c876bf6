"""Training: the LightningModule and what it needs to train safely (checkpoints, the skip guard, random streams,
sharding, warm starts)."""
