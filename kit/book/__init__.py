"""Book tooling: notebook execution with provenance, and generated book pages."""
