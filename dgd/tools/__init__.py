"""The operator's tools: ``dgd devices``, ``dgd levels`` and ``dgd demo``."""
