"""Operations: the engine's long-running work, its steps and guards."""
