"""Operations: the engine's long-running work, its steps and guards.

operation.py is the Operation aggregate, guard.py the per-resource guard,
affinity.py the affinity groups placing admits to. What each kind of
operation does is one module per kind (vm_*.py, volume_*.py) implementing
kind.OperationKind, listed in registry.KINDS; vm_kind.py and volume_kind.py
hold what a family of kinds shares, release.py how a VM's resources are
given back, deploy_ids.py the ids a deploy derives from its VM.
"""
