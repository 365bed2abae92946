"""Backend monitoring, failure detection, topology and promotion."""
