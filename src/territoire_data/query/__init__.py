"""One query layer for dataset tables: collections, CQL2, bbox, datetime, properties, sorting, CRS and paging,
compiled to bound SQL once for OGC API - Features, records, exports, tiles and the portal."""
