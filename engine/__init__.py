"""cloud-engine's decision layer: aggregates, commands and the command service.

Nothing in this package imports from api/, projections/ or effectors/.
"""
