-- Tracking pixels a workspace registers and attaches to links. A link's
-- pixels are kept on the link as a JSON array of pixel ids.
create table links.pixels (
    tenant_id   uuid not null,
    id          uuid not null,
    kind        text not null check (kind in ('meta', 'google_ads', 'ga4', 'linkedin', 'tiktok')),
    pixel_id    text not null,
    name        text,
    created_at  timestamptz not null,
    deleted_at  timestamptz,
    primary key (tenant_id, id)
);
alter table links.pixels enable row level security;
alter table links.pixels force row level security;
create policy tenant_or_system on links.pixels
    using (tenant_id = (select links.current_tenant()) or (select links.is_system()))
    with check (tenant_id = (select links.current_tenant()) or (select links.is_system()));
alter table links.links add column pixels text not null default '[]';
