"""The processes that send: supervisor, workers, per-site scheduling and the pure
policies (routing, shaping, retry) they apply."""
