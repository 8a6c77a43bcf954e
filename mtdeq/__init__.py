"""mtdeq: multi-task deep-equilibrium priors for image restoration (replication suite)."""

__version__ = "0.1.0"
