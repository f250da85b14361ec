"""territoire-data: a self-hosted, sovereign urban data platform for French local governments."""

__version__ = "0.1.0"
