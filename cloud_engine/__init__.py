"""cloud-engine's one import package: the layers live in folders at the
repository root (engine/, bus/, ...) and are installed under this name."""
