-- See the PostgreSQL migration.
alter table routing.routes add column rank integer not null default 0;
