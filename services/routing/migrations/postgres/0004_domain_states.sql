-- Whether a domain was removed, by domain id. `domain.verified` and
-- `domain.deleted` travel on consumers of their own, so a verification can be
-- applied after the removal that followed it; both events first meet on this
-- row (which orders them), and a removed domain is never verified again.
create table routing.domain_states (
    domain_id  uuid primary key,
    tenant_id  uuid not null,
    removed    boolean not null
);
alter table routing.domain_states enable row level security;
alter table routing.domain_states force row level security;
create policy tenant_read on routing.domain_states for select
    using (tenant_id = (select routing.current_tenant()) or (select routing.is_system()));
create policy tenant_insert on routing.domain_states for insert
    with check (tenant_id = (select routing.current_tenant()) or (select routing.is_system()));
create policy tenant_update on routing.domain_states for update
    using (tenant_id = (select routing.current_tenant()) or (select routing.is_system()))
    with check (tenant_id = (select routing.current_tenant()) or (select routing.is_system()));
