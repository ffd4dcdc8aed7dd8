-- Filtered reads of the whole workspace without scanning its cube. A workspace
-- summary filtered by one dimension reads only these two tables:
-- `pairs`: clicks per (workspace, hour) for every ordered pair of dimensions
-- (with country = US: the devices, browsers, … of those clicks);
-- `value_sketches`: distinct visitors per (dimension, value, hour).
-- Both are filled from what is already stored: pairs from the cube, sketches
-- from the raw events retention has kept (routing's visitor ids are hex HMACs;
-- anything else is left out).

create table analytics.pairs (
    tenant_id    text not null,
    dim          text not null,
    value        text not null,
    other        text not null,
    hour         integer not null,
    other_value  text not null,
    clicks       integer not null,
    humans       integer not null,
    primary key (tenant_id, dim, value, other, hour, other_value)
) without rowid;

create table analytics.value_sketches (
    tenant_id  text not null,
    dim        text not null,
    value      text not null,
    hour       integer not null,
    sketch     blob not null,
    primary key (tenant_id, dim, value, hour)
) without rowid;

with dims(dim) as (values ('country'), ('device'), ('browser'), ('os'), ('referrer'), ('bot'))
insert into analytics.pairs (tenant_id, dim, value, other, hour, other_value, clicks, humans)
select tenant_id, dim, value, other, hour, other_value, sum(clicks), sum(humans) from (
    select c.tenant_id, a.dim, case a.dim when 'country' then c.country when 'device' then c.device when 'browser' then c.browser when 'os' then c.os when 'referrer' then c.referrer when 'bot' then c.bot end as value,
        b.dim as other, c.hour, case b.dim when 'country' then c.country when 'device' then c.device when 'browser' then c.browser when 'os' then c.os when 'referrer' then c.referrer when 'bot' then c.bot end as other_value,
        c.clicks, case when c.bot = 'human' then c.clicks else 0 end as humans
    from analytics.cube c cross join dims a cross join dims b where a.dim <> b.dim
) as p group by tenant_id, dim, value, other, hour, other_value;

with dims(dim) as (values ('country'), ('device'), ('browser'), ('os'), ('referrer'), ('bot'))
insert into analytics.value_sketches (tenant_id, dim, value, hour, sketch)
select tenant_id, dim, value, hour, unhex('00' || replace(group_concat(distinct hash), ',', '')) from (
    select e.tenant_id, d.dim, case d.dim when 'country' then e.country when 'device' then e.device when 'browser' then e.browser when 'os' then e.os when 'referrer' then e.referrer when 'bot' then e.bot end as value,
        e.occurred_at - (e.occurred_at % 3600) as hour,
        substr(e.visitor, 15, 2) || substr(e.visitor, 13, 2) || substr(e.visitor, 11, 2) || substr(e.visitor, 9, 2) || substr(e.visitor, 7, 2) || substr(e.visitor, 5, 2) || substr(e.visitor, 3, 2) || substr(e.visitor, 1, 2) as hash
    from analytics.events e cross join dims d where e.visitor glob '[0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F]*'
) as s group by tenant_id, dim, value, hour;
