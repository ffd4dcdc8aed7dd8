-- Raw events are keyed by (tenant, time, event id): the consumer's insert skips
-- an event stored before, so a redelivered click is not counted twice, and the
-- consumer keeps no inbox rows for clicks (a write per click less). The key is
-- the table itself (without rowid), which also serves the tenant's time range:
-- two B-tree inserts per click instead of four (rows, two indexes and the inbox).

create table analytics.events_keyed (
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
    visitor      text not null,
    primary key (tenant_id, occurred_at, event_id)
) without rowid;

insert or ignore into analytics.events_keyed
    select tenant_id, occurred_at, event_id, kind, subject_id, link_id, qr_id, country, device, browser, os,
        referrer, bot, visitor
    from analytics.events order by tenant_id, occurred_at, event_id;

drop table analytics.events;
alter table analytics.events_keyed rename to events;
create index analytics.events_subject_time on events (tenant_id, subject_id, occurred_at);
