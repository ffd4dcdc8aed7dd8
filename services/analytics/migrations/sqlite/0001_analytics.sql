-- Analytics (see the PostgreSQL migration). Times are unix seconds; the raw
-- events are one table, and retention deletes by time.
create table analytics.subjects (
    tenant_id  text not null,
    id         text not null,
    kind       text not null,
    link_id    text,
    label      text not null,
    title      text,
    tags       text not null default '[]',
    deleted    integer not null default 0,
    version    integer not null,
    primary key (tenant_id, id)
) without rowid;

create table analytics.subject_tags (
    tenant_id   text not null,
    tag         text not null,
    subject_id  text not null,
    primary key (tenant_id, tag, subject_id)
) without rowid;

create table analytics.events (
    tenant_id    text not null,
    occurred_at  integer not null,
    event_id     text not null,
    kind         text not null,
    subject_id   text not null,
    link_id      text not null,
    qr_id        text,
    country      text not null,
    device       text not null,
    browser      text not null,
    os           text not null,
    referrer     text not null,
    bot          text not null,
    visitor      text not null
);
create index analytics.events_tenant_time on events (tenant_id, occurred_at, event_id);
create index analytics.events_subject_time on events (tenant_id, subject_id, occurred_at);

create table analytics.cube (
    tenant_id   text not null,
    subject_id  text not null,
    hour        integer not null,
    country     text not null,
    device      text not null,
    browser     text not null,
    os          text not null,
    referrer    text not null,
    bot         text not null,
    clicks      integer not null,
    primary key (tenant_id, subject_id, hour, country, device, browser, os, referrer, bot)
) without rowid;
create index analytics.cube_tenant_hour on cube (tenant_id, hour);

create table analytics.hourly (
    tenant_id   text not null,
    subject_id  text not null,
    dim         text not null,
    hour        integer not null,
    value       text not null,
    clicks      integer not null,
    humans      integer not null,
    primary key (tenant_id, subject_id, dim, hour, value)
) without rowid;

create table analytics.sketches (
    tenant_id   text not null,
    subject_id  text not null,
    hour        integer not null,
    sketch      blob not null,
    primary key (tenant_id, subject_id, hour)
) without rowid;
