"""Operations: the health endpoint and Prometheus metrics.

ops reads notifier (its tables, its instruments, the beat heartbeat); notifier
never imports ops.
"""
