"""Lists, segments, campaigns and runs (see README)."""
