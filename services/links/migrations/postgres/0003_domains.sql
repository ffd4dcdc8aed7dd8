-- Custom domains. Any workspace may claim a hostname; the one that proves
-- control of its DNS (a TXT record) owns it: a verified hostname is unique.
create table links.domains (
    tenant_id    uuid not null,
    id           uuid not null,
    hostname     text not null,
    token        text not null,
    verified_at  timestamptz,
    is_default   boolean not null default false,
    created_at   timestamptz not null,
    deleted_at   timestamptz,
    primary key (tenant_id, id)
);
create unique index domains_verified_hostname on links.domains (hostname)
    where verified_at is not null and deleted_at is null;
create unique index domains_tenant_hostname on links.domains (tenant_id, hostname) where deleted_at is null;
alter table links.domains enable row level security;
alter table links.domains force row level security;
create policy tenant_or_system on links.domains
    using (tenant_id = (select links.current_tenant()) or (select links.is_system()))
    with check (tenant_id = (select links.current_tenant()) or (select links.is_system()));
