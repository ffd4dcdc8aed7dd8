-- Verified custom domains (see the PostgreSQL migration).
create table routing.domains (
    hostname   text primary key,
    tenant_id  text not null,
    domain_id  text not null,
    version    integer not null
) without rowid;
