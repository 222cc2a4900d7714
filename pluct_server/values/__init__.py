"""Leaves every layer may import: the settings and the records passed between layers."""
