"""Shared-memory tables and locks: the only state shared between processes."""
