"""Pandera (polars backend) models of the extract and of every published table."""
