"""Records and bulk exports: CSV, GeoJSON, GeoParquet and sensor observations, streamed in constant memory."""
