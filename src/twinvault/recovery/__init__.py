"""Recovery: the repository sends a point in time to a recovery server (Data Recovery jobs)."""
