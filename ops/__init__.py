"""Operations: health endpoint, Prometheus metrics, beat heartbeat."""
