//! Workspace roles and what each may do.

use axum::http::StatusCode;
use kernel::Problem;

/// A role in a workspace, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Viewer: reads.
    Viewer,
    /// Member: reads and writes the workspace's content.
    Member,
    /// Admin: manages members, invitations and API keys.
    Admin,
    /// Owner: everything, including other owners.
    Owner,
}

impl Role {
    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(Self::Owner),
            "admin" => Some(Self::Admin),
            "member" => Some(Self::Member),
            "viewer" => Some(Self::Viewer),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Viewer => "viewer",
        }
    }

    /// Whether this role may manage members, invitations and keys.
    pub fn is_admin(self) -> bool {
        self >= Self::Admin
    }
}

/// The scopes an API key may carry.
pub const SCOPES: &[&str] = &[
    "links:read",
    "links:write",
    "qr:read",
    "qr:write",
    "analytics:read",
    "microsites:read",
    "microsites:write",
    "shop:read",
    "shop:write",
    "webhooks:write",
    "workspace:admin",
];

/// The least role a scope needs (a key never grants more than its creator has).
pub fn scope_needs(scope: &str) -> Role {
    Role::parse(kernel::auth::scope_role(scope)).unwrap_or(Role::Viewer)
}

/// 409: the change would leave a workspace without an owner.
pub fn last_owner() -> Problem {
    Problem::new(StatusCode::CONFLICT, "last-owner", "The last owner must stay")
        .with_detail("a workspace needs an owner: make someone else owner first")
}

/// 403 for a role that may not do this.
pub fn forbidden_for(role: Role) -> Problem {
    Problem::forbidden(format!("the {} role may not do this", role.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_from_viewer_to_owner() {
        assert!(Role::Owner > Role::Admin && Role::Admin > Role::Member && Role::Member > Role::Viewer);
        assert!(Role::Admin.is_admin() && !Role::Member.is_admin());
        for r in [Role::Owner, Role::Admin, Role::Member, Role::Viewer] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(scope_needs("links:write"), Role::Member);
        assert_eq!(scope_needs("workspace:admin"), Role::Admin);
    }
}
