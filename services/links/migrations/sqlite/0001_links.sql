-- Short links (see the PostgreSQL migration).
create table links.links (
    tenant_id      text not null,
    id             text not null,
    domain         text not null default '',
    slug           text not null,
    url            text not null,
    title          text,
    tags           text not null default '[]',
    expires_at     integer,
    expired_url    text,
    max_clicks     integer,
    password_hash  text,
    redirect_type  integer not null default 302,
    utm            text,
    ios_url        text,
    android_url    text,
    geo            text,
    created_at     integer not null,
    updated_at     integer not null,
    deleted_at     integer,
    primary key (tenant_id, id)
) without rowid;
create unique index links.links_domain_slug on links (domain, slug);

create table links.slugs (
    domain     text not null,
    slug       text not null,
    tenant_id  text not null,
    link_id    text not null,
    primary key (domain, slug)
) without rowid;
