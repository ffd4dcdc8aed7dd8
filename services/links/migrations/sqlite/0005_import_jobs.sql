-- CSV imports (see the PostgreSQL migration).
create table links.import_jobs (
    tenant_id    text not null,
    id           text not null,
    status       text not null check (status in ('running', 'done', 'failed')),
    total        integer not null,
    imported     integer not null default 0,
    errors       text not null default '[]',
    created_at   integer not null,
    finished_at  integer,
    primary key (tenant_id, id)
) without rowid;
