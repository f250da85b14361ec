"""Streaming CSV reading: encoding and dialect detection, cell parsers, geometry columns and reprojection."""
