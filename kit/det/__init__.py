"""Dense detection: boxes, priors, assigners, losses, heads and post-processing."""
