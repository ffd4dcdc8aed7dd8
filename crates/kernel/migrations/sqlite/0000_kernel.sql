-- The kernel's tables in every service file. Never edit: add a new migration.

create table {schema}.outbox (
    seq         integer primary key autoincrement,
    event_id    text not null unique,
    event_type  text not null,
    tenant_id   text not null,
    payload     text not null,
    created_at  text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

create table {schema}.inbox (
    consumer    text not null,
    event_id    text not null,
    handled_at  text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    primary key (consumer, event_id)
) without rowid;

create table {schema}.dead_letters (
    id          integer primary key autoincrement,
    consumer    text not null,
    event_id    text,
    tenant_id   text,
    event_type  text,
    payload     text not null,
    error       text not null,
    failed_at   text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
create index {schema}.dead_letters_tenant on dead_letters (tenant_id, failed_at);
