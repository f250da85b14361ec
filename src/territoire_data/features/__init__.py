"""OGC API - Features: collections of the visible datasets and the sensor network, CQL2, CRS, tiles."""
