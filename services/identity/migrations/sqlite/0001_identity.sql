-- Identity is the tenant directory: it answers "who is this and in which
-- workspaces may they act" before any tenant is known (login, refresh, API
-- keys, invitations by token). Its tables are therefore global, keyed by
-- workspace_id where a row belongs to a workspace, and every query that serves
-- a tenant-facing route names the caller's workspace explicitly.

create table identity.users (
    id                  text primary key,
    email               text not null,
    name                text not null,
    password_hash       text,
    email_verified      integer not null default 0,
    status              text not null default 'active' check (status in ('active', 'disabled')),
    platform_admin      integer not null default 0,
    avatar_asset_id     text,
    locale              text,
    timezone            text,
    preferences         text not null default '{}',
    last_workspace_id   text,
    created_at          integer not null,
    updated_at          integer not null
);
create unique index identity.users_email on users (email);
create index identity.users_name on users (name);

create table identity.workspaces (
    id          text primary key,
    name        text not null,
    created_by  text not null,
    created_at  integer not null
);

create table identity.memberships (
    workspace_id  text not null references workspaces (id) on delete cascade,
    user_id       text not null references users (id) on delete cascade,
    role          text not null check (role in ('owner', 'admin', 'member', 'viewer')),
    created_at    integer not null,
    primary key (workspace_id, user_id)
);
create index identity.memberships_user on memberships (user_id);

create table identity.sessions (
    id            text primary key,
    user_id       text not null references users (id) on delete cascade,
    workspace_id  text not null,
    kind          text not null default 'password',
    user_agent    text,
    ip            text,
    created_at    integer not null,
    last_used_at  integer not null,
    expires_at    integer not null,
    revoked_at    integer
);
create index identity.sessions_user on sessions (user_id, created_at);

-- One row per refresh token ever issued; a session is one rotation family.
create table identity.refresh_tokens (
    token_hash  text primary key,
    session_id  text not null references sessions (id) on delete cascade,
    created_at  integer not null,
    spent_at    integer
);
create index identity.refresh_tokens_session on refresh_tokens (session_id);

-- Single-use tokens sent by email: password reset and email verification.
create table identity.email_tokens (
    token_hash  text primary key,
    purpose     text not null check (purpose in ('reset', 'verify')),
    user_id     text not null references users (id) on delete cascade,
    email       text not null,
    created_at  integer not null,
    expires_at  integer not null,
    used_at     integer
);
create index identity.email_tokens_user on email_tokens (user_id, purpose);

create table identity.invitations (
    id            text primary key,
    workspace_id  text not null references workspaces (id) on delete cascade,
    email         text not null,
    role          text not null check (role in ('admin', 'member', 'viewer', 'owner')),
    token_hash    text not null unique,
    invited_by    text not null,
    created_at    integer not null,
    expires_at    integer not null,
    accepted_at   integer,
    revoked_at    integer
);
create index identity.invitations_workspace on invitations (workspace_id, created_at);

create table identity.api_keys (
    id            text primary key,
    workspace_id  text not null references workspaces (id) on delete cascade,
    user_id       text not null references users (id) on delete cascade,
    name          text not null,
    prefix        text not null,
    key_hash      text not null unique,
    scopes        text not null,
    created_at    integer not null,
    expires_at    integer,
    last_used_at  integer,
    revoked_at    integer
);
create index identity.api_keys_workspace on api_keys (workspace_id, created_at);

create table identity.oauth_identities (
    provider    text not null,
    subject     text not null,
    user_id     text not null references users (id) on delete cascade,
    email       text,
    created_at  integer not null,
    primary key (provider, subject)
);
create index identity.oauth_identities_user on oauth_identities (user_id);
