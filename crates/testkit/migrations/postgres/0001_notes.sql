create table fixture.notes (
    tenant_id   uuid not null,
    id          uuid not null,
    body        text not null,
    created_at  timestamptz not null default now(),
    primary key (tenant_id, id)
);
alter table fixture.notes enable row level security;
alter table fixture.notes force row level security;
create policy tenant_isolation on fixture.notes
    using (tenant_id = (select fixture.current_tenant()))
    with check (tenant_id = (select fixture.current_tenant()));

create table fixture.note_stats (
    tenant_id   uuid primary key,
    notes       bigint not null default 0,
    views       bigint not null default 0
);
alter table fixture.note_stats enable row level security;
alter table fixture.note_stats force row level security;
create policy tenant_isolation on fixture.note_stats
    using (tenant_id = (select fixture.current_tenant()))
    with check (tenant_id = (select fixture.current_tenant()));
