-- Dynamic QR codes: each has its own scan code (/q/{code}) pointing at a link,
-- so a scan is attributed to the code and the destination can change without
-- reprinting. Codes live in the slug directory under the domain '#qr' (no
-- hostname starts with '#').
create table links.qr_codes (
    tenant_id   uuid not null,
    id          uuid not null,
    code        text not null,
    link_id     uuid not null,
    title       text,
    created_at  timestamptz not null,
    updated_at  timestamptz not null,
    deleted_at  timestamptz,
    primary key (tenant_id, id)
);
create unique index qr_codes_code on links.qr_codes (code);
alter table links.qr_codes enable row level security;
alter table links.qr_codes force row level security;
create policy tenant_or_system on links.qr_codes
    using (tenant_id = (select links.current_tenant()) or (select links.is_system()))
    with check (tenant_id = (select links.current_tenant()) or (select links.is_system()));
