-- Verified custom domains: which workspace a Host header belongs to.
create table routing.domains (
    hostname   text primary key,
    tenant_id  uuid not null,
    domain_id  uuid not null,
    version    timestamptz not null
);
alter table routing.domains enable row level security;
alter table routing.domains force row level security;
create policy public_read on routing.domains for select using (true);
create policy tenant_insert on routing.domains for insert
    with check (tenant_id = (select routing.current_tenant()) or (select routing.is_system()));
create policy tenant_update on routing.domains for update
    using (tenant_id = (select routing.current_tenant()) or (select routing.is_system()))
    with check (tenant_id = (select routing.current_tenant()) or (select routing.is_system()));
create policy tenant_delete on routing.domains for delete
    using (tenant_id = (select routing.current_tenant()) or (select routing.is_system()));
