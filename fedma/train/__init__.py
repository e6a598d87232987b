"""The silo trainer: one pass over a silo's shard for a round, only the projector learns."""
