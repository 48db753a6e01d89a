"""Process-wide infrastructure every component shares, below every layer:
settings (CLOUD_ENGINE_*), the database target and the embedded PostgreSQL,
asyncpg connections and pools, DDL that processes may run at once, the
tables everyone names, logging, and the process runner (signals, the event
loop). It imports nothing from the layers."""
