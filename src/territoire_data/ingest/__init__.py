"""Ingest: connectors (files, MQTT) → decode → validate → batch → write."""
