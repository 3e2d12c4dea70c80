"""Where model weights come from (local, hf://, s3://, pinned URLs), the per-node cache, strict loading."""
