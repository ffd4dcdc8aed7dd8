-- Identity is the tenant directory: it answers "who is this and in which
-- workspaces may they act" before any tenant is known (login, refresh, API
-- keys, invitations by token). Its tables are therefore global, keyed by
-- workspace_id where a row belongs to a workspace, and every query that serves
-- a tenant-facing route names the caller's workspace explicitly.

create table identity.users (
    id                  uuid primary key,
    email               text not null,
    name                text not null,
    password_hash       text,
    email_verified      boolean not null default false,
    status              text not null default 'active' check (status in ('active', 'disabled')),
    platform_admin      boolean not null default false,
    avatar_asset_id     uuid,
    locale              text,
    timezone            text,
    preferences         text not null default '{}',
    last_workspace_id   uuid,
    created_at          timestamptz not null,
    updated_at          timestamptz not null
);
create unique index users_email on identity.users (email);
create index users_name on identity.users (lower(name));

create table identity.workspaces (
    id          uuid primary key,
    name        text not null,
    created_by  uuid not null,
    created_at  timestamptz not null
);

create table identity.memberships (
    workspace_id  uuid not null references identity.workspaces (id) on delete cascade,
    user_id       uuid not null references identity.users (id) on delete cascade,
    role          text not null check (role in ('owner', 'admin', 'member', 'viewer')),
    created_at    timestamptz not null,
    primary key (workspace_id, user_id)
);
create index memberships_user on identity.memberships (user_id);

create table identity.sessions (
    id            uuid primary key,
    user_id       uuid not null references identity.users (id) on delete cascade,
    workspace_id  uuid not null,
    kind          text not null default 'password',
    user_agent    text,
    ip            text,
    created_at    timestamptz not null,
    last_used_at  timestamptz not null,
    expires_at    timestamptz not null,
    revoked_at    timestamptz
);
create index sessions_user on identity.sessions (user_id, created_at);

-- One row per refresh token ever issued; a session is one rotation family.
create table identity.refresh_tokens (
    token_hash  text primary key,
    session_id  uuid not null references identity.sessions (id) on delete cascade,
    created_at  timestamptz not null,
    spent_at    timestamptz
);
create index refresh_tokens_session on identity.refresh_tokens (session_id);

-- Single-use tokens sent by email: password reset and email verification.
create table identity.email_tokens (
    token_hash  text primary key,
    purpose     text not null check (purpose in ('reset', 'verify')),
    user_id     uuid not null references identity.users (id) on delete cascade,
    email       text not null,
    created_at  timestamptz not null,
    expires_at  timestamptz not null,
    used_at     timestamptz
);
create index email_tokens_user on identity.email_tokens (user_id, purpose);

create table identity.invitations (
    id            uuid primary key,
    workspace_id  uuid not null references identity.workspaces (id) on delete cascade,
    email         text not null,
    role          text not null check (role in ('admin', 'member', 'viewer', 'owner')),
    token_hash    text not null unique,
    invited_by    uuid not null,
    created_at    timestamptz not null,
    expires_at    timestamptz not null,
    accepted_at   timestamptz,
    revoked_at    timestamptz
);
create index invitations_workspace on identity.invitations (workspace_id, created_at);

create table identity.api_keys (
    id            uuid primary key,
    workspace_id  uuid not null references identity.workspaces (id) on delete cascade,
    user_id       uuid not null references identity.users (id) on delete cascade,
    name          text not null,
    prefix        text not null,
    key_hash      text not null unique,
    scopes        text not null,
    created_at    timestamptz not null,
    expires_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
create index api_keys_workspace on identity.api_keys (workspace_id, created_at);

create table identity.oauth_identities (
    provider    text not null,
    subject     text not null,
    user_id     uuid not null references identity.users (id) on delete cascade,
    email       text,
    created_at  timestamptz not null,
    primary key (provider, subject)
);
create index oauth_identities_user on identity.oauth_identities (user_id);
