//! `memgate token import-legacy`: carries the plaintext tokens of the Mem0 MCP
//! Server stack (`mcp_auth_tokens`) over as hashes, so the same tokens keep
//! working through memgate. Idempotent: tokens already imported are skipped.

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use sqlx::Connection;

use crate::audit::{AuditEvent, kind};
use crate::identity::Permissions;
use crate::store::{NewToken, Store};
use crate::token;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// PostgreSQL URL of the old stack's database
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The table holding the plaintext tokens
    #[arg(long, default_value = "mcp_auth_tokens")]
    pub table: String,
    /// Print the import summary as JSON
    #[arg(long)]
    pub json: bool,
}

/// One row of the old table, every column read as text so that any of the
/// column types the old stack used (text, arrays, JSON, timestamps) is accepted.
#[derive(sqlx::FromRow)]
struct LegacyRow {
    token: Option<String>,
    user_id: Option<String>,
    user_email: Option<String>,
    display_name: Option<String>,
    enabled: Option<bool>,
    created_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    created_by: Option<String>,
    permissions: Option<String>,
}

/// `read,write`, `{read,write}` (array) or `["read","write"]` (JSON); empty = read,write.
fn legacy_permissions(text: Option<&str>) -> Result<Permissions, String> {
    let cleaned: String = text
        .unwrap_or_default()
        .chars()
        .filter(|c| !matches!(c, '{' | '}' | '[' | ']' | '"' | ' '))
        .collect();
    if cleaned.is_empty() {
        return Ok(Permissions::READ_WRITE);
    }
    Permissions::parse(&cleaned)
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

pub async fn run(store: &dyn Store, args: ImportArgs) -> anyhow::Result<String> {
    if !is_identifier(&args.table) {
        anyhow::bail!("--table must be a plain table name");
    }
    let mut legacy = sqlx::PgConnection::connect(&args.from)
        .await
        .with_context(|| {
            format!(
                "cannot connect to {}",
                crate::config::mask_url_password(&args.from)
            )
        })?;
    let query = format!(
        "SELECT token::text, user_id::text, user_email::text, display_name::text, enabled::boolean, \
         created_at::timestamptz, last_used_at::timestamptz, expires_at::timestamptz, \
         created_by::text, permissions::text FROM {} ORDER BY created_at",
        args.table
    );
    let rows: Vec<LegacyRow> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .fetch_all(&mut legacy)
        .await
        .with_context(|| format!("cannot read table {}", args.table))?;
    let (mut imported, mut present, mut skipped) = (0usize, 0usize, Vec::new());
    for (n, row) in rows.into_iter().enumerate() {
        let Some(secret) = row.token.filter(|t| token::is_well_formed(t)) else {
            // Never print what may be a token; the row number is enough.
            skipped.push(format!(
                "row {}: not a mcp_ token memgate can accept",
                n + 1
            ));
            continue;
        };
        let prefix = token::display_prefix(&secret).to_string();
        let Some(user_id) = row
            .user_id
            .filter(|u| crate::identity::user_id_problem(u).is_none())
        else {
            skipped.push(format!("{prefix}: missing or unusable user_id"));
            continue;
        };
        let permissions = match legacy_permissions(row.permissions.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                skipped.push(format!("{prefix}: permissions: {e}"));
                continue;
            }
        };
        let new = NewToken {
            token_hash: token::hash_hex(&secret),
            prefix: prefix.clone(),
            user_id: user_id.clone(),
            name: row.display_name,
            email: row.user_email,
            permissions,
            created_at: row.created_at.unwrap_or_else(Utc::now),
            created_by: row.created_by.or(Some("import-legacy".into())),
            expires_at: row.expires_at,
            rate_limit_rps: None,
        };
        if store
            .import_token(&new, row.enabled.unwrap_or(true), row.last_used_at)
            .await?
        {
            imported += 1;
            let mut event = AuditEvent::new(kind::TOKEN_ADMIN, true);
            event.user_id = Some(user_id);
            event.token_prefix = Some(prefix);
            event.method = Some("cli".into());
            event.reason = Some("import-legacy".into());
            if let Err(e) = store.insert_audit(&[event]).await {
                eprintln!("warning: an import was not recorded in the audit trail: {e}");
            }
        } else {
            present += 1;
        }
    }
    if args.json {
        return Ok(serde_json::json!({
            "imported": imported,
            "already_present": present,
            "skipped": skipped,
        })
        .to_string());
    }
    let mut out = format!(
        "Imported {imported} token(s); {present} were already imported; {} skipped.",
        skipped.len()
    );
    for reason in &skipped {
        out.push_str(&format!("\n  skipped {reason}"));
    }
    // The stack's MCP server reads this table on every tool call (memgate's
    // service row lives there), so only the imported plaintext rows go.
    out.push_str(&format!(
        "\nmemgate stores only hashes. The old table still holds the imported tokens in plain \
         text, and the stack's MCP server still reads it: keep the table and memgate's service \
         row, and once clients work through memgate delete the imported rows \
         (DELETE FROM {} WHERE token LIKE 'mcp\\_%';) and old backups.",
        args.table
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_permission_spelling() {
        let rw = Permissions::READ_WRITE;
        assert_eq!(legacy_permissions(None), Ok(rw));
        assert_eq!(legacy_permissions(Some("read,write")), Ok(rw));
        assert_eq!(legacy_permissions(Some("{read,write}")), Ok(rw));
        assert_eq!(legacy_permissions(Some("[\"read\", \"write\"]")), Ok(rw));
        assert_eq!(
            legacy_permissions(Some("{read}")),
            Permissions::parse("read")
        );
        assert!(legacy_permissions(Some("{root}")).is_err());
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(is_identifier("mcp_auth_tokens"));
        assert!(!is_identifier("t; DROP TABLE x"));
        assert!(!is_identifier(""));
    }
}
