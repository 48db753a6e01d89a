"""The engine's process managers: they consume events and results and turn
them into commands. The operation manager plans, places and drives every
unfinished operation (deploy, lifecycle, volume work) step by step; the
recorder turns effector results into events."""
