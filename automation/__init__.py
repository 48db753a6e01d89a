"""Automation: the processes that act on the cloud by themselves (convergence
of drift, host liveness and HA, maintenance drain). They watch the read
models and the hypervisors and act only through the engine's commands, the
same ones any client sends, so every automatic step is an operation in the
log with its reason."""
