"""``latentmas bench``: measurement (``measure``), reporting (``report``) and the command line (``cli``)."""
