"""A benchmark of chatserver: ``python -m chatserver.bench``."""
