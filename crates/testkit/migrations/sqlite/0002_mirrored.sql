alter table fixture.note_stats add column mirrored integer not null default 0;
