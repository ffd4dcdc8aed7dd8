-- See the PostgreSQL migration.
create table routing.domain_states (
    domain_id  text primary key,
    tenant_id  text not null,
    removed    boolean not null
) without rowid;
