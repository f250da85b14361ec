"""Steering indicators: declared definitions -> parameterized SQL -> values kept per unit and period, published
through the platform's doors (API, OGC API – Features, DCAT-AP, exports) and the portal's "Indicateurs" pages."""
