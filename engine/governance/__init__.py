"""Governance tools over a config and a database: docs, diagram, export, diff, replay,
explain and the quarantine. They read through the store's read interface."""
