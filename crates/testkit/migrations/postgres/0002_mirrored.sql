alter table fixture.note_stats add column mirrored bigint not null default 0;
