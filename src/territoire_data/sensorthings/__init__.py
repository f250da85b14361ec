"""OGC SensorThings API 1.1 (Sensing): entity model, OData query -> SQL, reads, writes, routes, MQTT."""
