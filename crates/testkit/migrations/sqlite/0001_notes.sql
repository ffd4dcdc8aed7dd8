create table fixture.notes (
    tenant_id   text not null,
    id          text not null,
    body        text not null,
    created_at  text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    primary key (tenant_id, id)
) without rowid;

create table fixture.note_stats (
    tenant_id   text primary key,
    notes       integer not null default 0,
    views       integer not null default 0
) without rowid;
