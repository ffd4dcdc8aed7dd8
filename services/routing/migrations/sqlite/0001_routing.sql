-- Routing's read model (see the PostgreSQL migration).
create table routing.routes (
    domain      text not null,
    slug        text not null,
    tenant_id   text not null,
    link_id     text not null,
    record      text not null,
    version     integer not null,
    primary key (domain, slug)
) without rowid;
create index routing.routes_tenant on routes (tenant_id, link_id);

create table routing.click_counts (
    tenant_id  text not null,
    link_id    text not null,
    clicks     integer not null default 0,
    primary key (tenant_id, link_id)
) without rowid;
