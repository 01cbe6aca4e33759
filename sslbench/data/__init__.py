"""Data: the embedded procedural data set, the real data sets' loaders, and writers to their layouts."""

from sslbench.data import datasets, formats  # noqa: F401  (registration happens at import)
