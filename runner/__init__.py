"""The composition root: the `cloud-engine` command starts and wires components.

Only this package imports from every layer; engine/ stays free of them.
"""
