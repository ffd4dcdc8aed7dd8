-- Raw events are unique per (tenant, time, event id): the consumer's insert
-- skips an event stored before (`on conflict do nothing`), so a redelivered
-- click is not counted twice, and the consumer keeps no inbox rows for clicks
-- (a write per click less). The partition key (occurred_at) is part of the key,
-- as PostgreSQL requires of a unique index on a partitioned table; the index
-- replaces the one the tenant's time range was read through.

drop index analytics.events_tenant_time;
create unique index events_tenant_time on analytics.events (tenant_id, occurred_at, event_id);
