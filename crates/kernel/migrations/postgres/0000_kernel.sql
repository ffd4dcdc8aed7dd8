-- The kernel's tables in every service schema. Never edit: add a new migration.

-- The tenant of the current transaction, or NULL (then tenant policies match no rows).
-- STABLE so that policies keep index scans; nullif keeps '' (a pooled connection
-- after a transaction-local set_config) from failing the uuid cast.
create function {schema}.current_tenant() returns uuid
    language sql stable
    as $$ select nullif(current_setting('app.tenant_id', true), '')::uuid $$;

-- True inside the kernel's own system transactions (outbox relay, consumers' bookkeeping).
create function {schema}.is_system() returns boolean
    language sql stable
    as $$ select coalesce(current_setting('app.scope', true), '') = 'system' $$;

-- Events written in the same transaction as the state change they describe.
create table {schema}.outbox (
    seq         bigint generated always as identity primary key,
    event_id    uuid not null unique,
    event_type  text not null,
    tenant_id   uuid not null,
    payload     jsonb not null,
    created_at  timestamptz not null default now()
);
alter table {schema}.outbox enable row level security;
alter table {schema}.outbox force row level security;
create policy tenant_or_system on {schema}.outbox
    using (tenant_id = (select {schema}.current_tenant()) or (select {schema}.is_system()))
    with check (tenant_id = (select {schema}.current_tenant()) or (select {schema}.is_system()));

-- Event ids each consumer of this service has handled: effects happen once.
create table {schema}.inbox (
    consumer    text not null,
    event_id    uuid not null,
    handled_at  timestamptz not null default now(),
    primary key (consumer, event_id)
);

-- Events a consumer could not handle, kept for inspection and replay.
create table {schema}.dead_letters (
    id          bigint generated always as identity primary key,
    consumer    text not null,
    event_id    uuid,
    tenant_id   uuid,
    event_type  text,
    payload     text not null,
    error       text not null,
    failed_at   timestamptz not null default now()
);
create index dead_letters_tenant on {schema}.dead_letters (tenant_id, failed_at);
alter table {schema}.dead_letters enable row level security;
alter table {schema}.dead_letters force row level security;
create policy tenant_or_system on {schema}.dead_letters
    using (tenant_id = (select {schema}.current_tenant()) or (select {schema}.is_system()))
    with check (tenant_id = (select {schema}.current_tenant()) or (select {schema}.is_system()));
