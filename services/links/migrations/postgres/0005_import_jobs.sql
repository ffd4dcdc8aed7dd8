-- CSV imports run in the background; each keeps its per-row report here.
create table links.import_jobs (
    tenant_id    uuid not null,
    id           uuid not null,
    status       text not null check (status in ('running', 'done', 'failed')),
    total        bigint not null,
    imported     bigint not null default 0,
    errors       text not null default '[]',
    created_at   timestamptz not null,
    finished_at  timestamptz,
    primary key (tenant_id, id)
);
alter table links.import_jobs enable row level security;
alter table links.import_jobs force row level security;
create policy tenant_or_system on links.import_jobs
    using (tenant_id = (select links.current_tenant()) or (select links.is_system()))
    with check (tenant_id = (select links.current_tenant()) or (select links.is_system()));
