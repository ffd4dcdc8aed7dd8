-- A running import's last sign of life (see the PostgreSQL migration).
alter table links.import_jobs add column heartbeat_at integer;
