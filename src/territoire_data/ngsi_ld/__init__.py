"""NGSI-LD (ETSI GS CIM 009 V1.8.1) over the same store: parse, compile, execute, render, each its own module."""
