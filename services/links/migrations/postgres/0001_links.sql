-- Short links. A slug is unique per domain across every tenant (the public
-- path /{slug} is looked up before any tenant is known), and a deleted link
-- keeps its slug reserved.
create table links.links (
    tenant_id      uuid not null,
    id             uuid not null,
    domain         text not null default '',
    slug           text not null,
    url            text not null,
    title          text,
    tags           text not null default '[]',
    expires_at     timestamptz,
    expired_url    text,
    max_clicks     bigint,
    password_hash  text,
    redirect_type  integer not null default 302,
    utm            text,
    ios_url        text,
    android_url    text,
    geo            text,
    created_at     timestamptz not null,
    updated_at     timestamptz not null,
    deleted_at     timestamptz,
    primary key (tenant_id, id)
);
create unique index links_domain_slug on links.links (domain, slug);
alter table links.links enable row level security;
alter table links.links force row level security;
create policy tenant_or_system on links.links
    using (tenant_id = (select links.current_tenant()) or (select links.is_system()))
    with check (tenant_id = (select links.current_tenant()) or (select links.is_system()));

-- The slug directory: which tenant's link a public path names. Anyone may read
-- it (the redirect is public); only the owning tenant writes. Its primary key
-- keeps slugs unique per domain across tenants.
create table links.slugs (
    domain     text not null,
    slug       text not null,
    tenant_id  uuid not null,
    link_id    uuid not null,
    primary key (domain, slug)
);
alter table links.slugs enable row level security;
alter table links.slugs force row level security;
create policy public_read on links.slugs for select using (true);
create policy tenant_insert on links.slugs for insert
    with check (tenant_id = (select links.current_tenant()) or (select links.is_system()));
