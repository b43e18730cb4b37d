"""Prefect flows: they read, call transforms, validate, write and log; no rule lives here."""
