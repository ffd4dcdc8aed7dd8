-- Tracking pixels (see the PostgreSQL migration).
create table links.pixels (
    tenant_id   text not null,
    id          text not null,
    kind        text not null check (kind in ('meta', 'google_ads', 'ga4', 'linkedin', 'tiktok')),
    pixel_id    text not null,
    name        text,
    created_at  integer not null,
    deleted_at  integer,
    primary key (tenant_id, id)
) without rowid;
alter table links.links add column pixels text not null default '[]';
