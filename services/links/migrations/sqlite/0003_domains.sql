-- Custom domains (see the PostgreSQL migration).
create table links.domains (
    tenant_id    text not null,
    id           text not null,
    hostname     text not null,
    token        text not null,
    verified_at  integer,
    is_default   integer not null default 0,
    created_at   integer not null,
    deleted_at   integer,
    primary key (tenant_id, id)
) without rowid;
create unique index links.domains_verified_hostname on domains (hostname)
    where verified_at is not null and deleted_at is null;
create unique index links.domains_tenant_hostname on domains (tenant_id, hostname) where deleted_at is null;
