"""Flavors: one small module per library, each filling in `conveyor.model.Flavor`."""
