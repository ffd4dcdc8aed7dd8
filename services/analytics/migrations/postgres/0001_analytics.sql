-- Analytics: raw click and scan events, hourly rollups, and what analytics
-- knows of links and QR codes (from their events; it never reads links' tables).
-- subject_id is a link's id for clicks and a QR code's id for scans; the nil
-- UUID stands for the whole workspace in `hourly` and `sketches`.

create table analytics.subjects (
    tenant_id  uuid not null,
    id         uuid not null,
    kind       text not null,
    link_id    uuid,
    label      text not null,
    title      text,
    tags       text not null default '[]',
    deleted    boolean not null default false,
    version    bigint not null,
    primary key (tenant_id, id)
);

create table analytics.subject_tags (
    tenant_id   uuid not null,
    tag         text not null,
    subject_id  uuid not null,
    primary key (tenant_id, tag, subject_id)
);

-- Raw events, append-only, one partition per month (see maintain_partitions).
create table analytics.events (
    tenant_id    uuid not null,
    occurred_at  timestamptz not null,
    event_id     uuid not null,
    kind         text not null,
    subject_id   uuid not null,
    link_id      uuid not null,
    qr_id        uuid,
    country      text not null,
    device       text not null,
    browser      text not null,
    os           text not null,
    referrer     text not null,
    bot          text not null,
    visitor      text not null
) partition by range (occurred_at);
create index events_tenant_time on analytics.events (tenant_id, occurred_at, event_id);
create index events_subject_time on analytics.events (tenant_id, subject_id, occurred_at);
create table analytics.events_default partition of analytics.events default;

-- Clicks per (subject, hour) and every combination of the dimensions: filtered queries.
create table analytics.cube (
    tenant_id   uuid not null,
    subject_id  uuid not null,
    hour        timestamptz not null,
    country     text not null,
    device      text not null,
    browser     text not null,
    os          text not null,
    referrer    text not null,
    bot         text not null,
    clicks      bigint not null,
    primary key (tenant_id, subject_id, hour, country, device, browser, os, referrer, bot)
);
create index cube_tenant_hour on analytics.cube (tenant_id, hour);

-- Clicks per (workspace, dimension, hour, value): unfiltered workspace summaries
-- (subject_id is always the nil UUID for now; a subject reads its cube rows).
create table analytics.hourly (
    tenant_id   uuid not null,
    subject_id  uuid not null,
    dim         text not null,
    hour        timestamptz not null,
    value       text not null,
    clicks      bigint not null,
    humans      bigint not null,
    primary key (tenant_id, subject_id, dim, hour, value)
);

-- Distinct visitors per (subject or workspace, hour): HyperLogLog sketches.
create table analytics.sketches (
    tenant_id   uuid not null,
    subject_id  uuid not null,
    hour        timestamptz not null,
    sketch      bytea not null,
    primary key (tenant_id, subject_id, hour)
);

-- One row per tenant, updated first by each ingest transaction: two consumer
-- instances never merge the same sketch at once.
create table analytics.ingest_locks (
    tenant_id  uuid primary key,
    at         timestamptz not null
);

do $$
declare t text;
begin
    foreach t in array array['subjects', 'subject_tags', 'events', 'events_default', 'cube', 'hourly', 'sketches', 'ingest_locks'] loop
        execute format('alter table analytics.%I enable row level security', t);
        execute format('alter table analytics.%I force row level security', t);
        execute format('create policy tenant_or_system on analytics.%I
            using (tenant_id = (select analytics.current_tenant()) or (select analytics.is_system()))
            with check (tenant_id = (select analytics.current_tenant()) or (select analytics.is_system()))', t);
    end loop;
end $$;

-- Creates the monthly partitions around now and drops those wholly older than
-- `keep_months`. It runs as the schema owner (the application role cannot run
-- DDL); it takes only a number, and names tables with format('%I').
create function analytics.maintain_partitions(keep_months integer) returns integer
language plpgsql security definer set search_path = pg_catalog, analytics as $$
declare
    m date;
    cutoff date := (date_trunc('month', now()) - make_interval(months => keep_months))::date;
    part record;
    dropped integer := 0;
begin
    -- The tables force row-level security on their owner too: act in the system scope, then leave it.
    perform set_config('app.scope', 'system', true);
    for i in -1..2 loop
        m := (date_trunc('month', now()) + make_interval(months => i))::date;
        if to_regclass(format('analytics.events_%s', to_char(m, 'YYYY_MM'))) is null then
            -- Rows of that month that reached the default partition move into the new one.
            create temporary table if not exists moved (like analytics.events) on commit drop;
            with gone as (
                delete from analytics.events_default where occurred_at >= m and occurred_at < (m + interval '1 month')
                returning *)
            insert into moved select * from gone;
            execute format('create table analytics.%I partition of analytics.events for values from (%L) to (%L)',
                'events_' || to_char(m, 'YYYY_MM'), m, (m + interval '1 month')::date);
            execute format('alter table analytics.%I enable row level security', 'events_' || to_char(m, 'YYYY_MM'));
            execute format('alter table analytics.%I force row level security', 'events_' || to_char(m, 'YYYY_MM'));
            insert into analytics.events select * from moved;
            delete from moved;
        end if;
    end loop;
    for part in
        select c.relname, pg_get_expr(c.relpartbound, c.oid) as bound
        from pg_inherits i join pg_class c on c.oid = i.inhrelid
        where i.inhparent = 'analytics.events'::regclass and c.relname ~ '^events_[0-9]{4}_[0-9]{2}$'
    loop
        if to_date(substr(part.relname, 8), 'YYYY_MM') < cutoff then
            execute format('drop table analytics.%I', part.relname);
            dropped := dropped + 1;
        end if;
    end loop;
    delete from analytics.events_default where occurred_at < cutoff;
    perform set_config('app.scope', '', true);
    return dropped;
end $$;
revoke all on function analytics.maintain_partitions(integer) from public;
