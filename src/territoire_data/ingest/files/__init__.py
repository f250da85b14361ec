"""The file-import wing: CSV and GeoJSON files read, validated against a Table Schema and loaded into a dataset's
typed table — by the CLI, the HTTP import door and the recurring file connectors alike."""
