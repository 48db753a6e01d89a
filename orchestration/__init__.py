"""The engine's process managers: they consume events and results and turn
them into commands (effector results recorded as events; sagas later)."""
