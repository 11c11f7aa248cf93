"""tally: a prepaid-balance billing engine that survives incident #28."""

__version__ = "0.1.0"
