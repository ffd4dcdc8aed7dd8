-- A running import's last sign of life: a job whose process died stops
-- beating, and readers report it interrupted instead of running forever.
alter table links.import_jobs add column heartbeat_at timestamptz;
