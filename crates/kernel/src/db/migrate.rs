//! Embedded SQL migrations: one list per service, one text per engine, with
//! the same version names; never edited once released (a checksum guards it).

use sha2::{Digest, Sha256};

/// One migration step of a service schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Sortable name, e.g. `0001_init`.
    pub version: &'static str,
    /// The PostgreSQL text (tables as `schema.table`).
    pub postgres: &'static str,
    /// The SQLite text (the service file is attached as `schema`).
    pub sqlite: &'static str,
}

/// A service's schema and its migrations, in order.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Schema name: PostgreSQL schema, SQLite attachment name and file name.
    pub schema: &'static str,
    /// Steps in the order they apply.
    pub steps: &'static [Migration],
}

/// The kernel's own tables (outbox, inbox, dead letters, RLS helpers), created
/// first in every service schema. `{schema}` is replaced by the schema name.
pub(crate) const KERNEL_VERSION: &str = "0000_kernel";
pub(crate) const KERNEL_POSTGRES: &str = include_str!("../../migrations/postgres/0000_kernel.sql");
pub(crate) const KERNEL_SQLITE: &str = include_str!("../../migrations/sqlite/0000_kernel.sql");

/// A step ready to apply: version, SQL text and its checksum.
pub(crate) struct Step {
    pub(crate) version: String,
    pub(crate) sql: String,
    pub(crate) checksum: String,
}

impl Migrations {
    /// The steps not applied yet, given `(version, checksum)` of those that are;
    /// an applied step whose text changed since is an error.
    pub(crate) fn pending(
        &self,
        postgres: bool,
        done: &[(String, String)],
    ) -> Result<Vec<Step>, super::DbError> {
        let mut pending = Vec::new();
        for step in self.steps_for(postgres) {
            match done.iter().find(|(v, _)| *v == step.version) {
                None => pending.push(step),
                Some((_, sum)) if *sum == step.checksum => {}
                Some(_) => {
                    return Err(super::DbError::Migration {
                        schema: self.schema.to_string(),
                        version: step.version,
                        message: "was edited after it was applied; add a new migration instead".into(),
                    });
                }
            }
        }
        Ok(pending)
    }

    /// Every step for `engine`, the kernel's first.
    pub(crate) fn steps_for(&self, postgres: bool) -> Vec<Step> {
        let kernel = if postgres { KERNEL_POSTGRES } else { KERNEL_SQLITE };
        let first = kernel.replace("{schema}", self.schema);
        std::iter::once((KERNEL_VERSION.to_string(), first))
            .chain(
                self.steps.iter().map(|m| {
                    (m.version.to_string(), if postgres { m.postgres } else { m.sqlite }.to_string())
                }),
            )
            .map(|(version, sql)| {
                let checksum = crate::hex(&Sha256::digest(sql.as_bytes()));
                Step { version, sql, checksum }
            })
            .collect()
    }
}
