"""Datasets and their metadata: Table Schema → typed table, the file loader, import reports."""
