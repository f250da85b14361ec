"""Database access: engine and pools, Core tables, bulk writer."""
