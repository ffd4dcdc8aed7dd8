-- Routing's read model: the public face of links, fed by link events. Anyone
-- may read a route (a redirect shows its destination anyway); only the owning
-- tenant's transactions write it.
create table routing.routes (
    domain      text not null,
    slug        text not null,
    tenant_id   uuid not null,
    link_id     uuid not null,
    record      text not null,
    version     timestamptz not null,
    primary key (domain, slug)
);
create index routes_tenant on routing.routes (tenant_id, link_id);
alter table routing.routes enable row level security;
alter table routing.routes force row level security;
create policy public_read on routing.routes for select using (true);
create policy tenant_insert on routing.routes for insert
    with check (tenant_id = (select routing.current_tenant()) or (select routing.is_system()));
create policy tenant_update on routing.routes for update
    using (tenant_id = (select routing.current_tenant()) or (select routing.is_system()))
    with check (tenant_id = (select routing.current_tenant()) or (select routing.is_system()));
create policy tenant_delete on routing.routes for delete
    using (tenant_id = (select routing.current_tenant()) or (select routing.is_system()));

-- Clicks per link, counted from routing's own click events (for max_clicks).
create table routing.click_counts (
    tenant_id  uuid not null,
    link_id    uuid not null,
    clicks     bigint not null default 0,
    primary key (tenant_id, link_id)
);
alter table routing.click_counts enable row level security;
alter table routing.click_counts force row level security;
create policy public_read on routing.click_counts for select using (true);
create policy tenant_write on routing.click_counts for insert
    with check (tenant_id = (select routing.current_tenant()) or (select routing.is_system()));
create policy tenant_update on routing.click_counts for update
    using (tenant_id = (select routing.current_tenant()) or (select routing.is_system()))
    with check (tenant_id = (select routing.current_tenant()) or (select routing.is_system()));
