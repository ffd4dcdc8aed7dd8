-- Dynamic QR codes (see the PostgreSQL migration).
create table links.qr_codes (
    tenant_id   text not null,
    id          text not null,
    code        text not null,
    link_id     text not null,
    title       text,
    created_at  integer not null,
    updated_at  integer not null,
    deleted_at  integer,
    primary key (tenant_id, id)
) without rowid;
create unique index links.qr_codes_code on qr_codes (code);
