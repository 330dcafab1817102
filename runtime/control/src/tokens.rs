//! Tenant tokens: bearer tokens that let a tenant manage its own part of the
//! gateway through the admin API, and nothing else.
//!
//! The operator creates one with `POST /tenants/NAME/tokens`; it is shown
//! once, in that answer. Only its SHA-256 is kept, in the data directory
//! (`tenant-tokens.json`, written whole and renamed into place, mode 0600),
//! so a copy of the directory lets no one in. A tenant holds at most
//! [`MAX_TOKENS`] at a time, so a token is rotated by creating the next,
//! moving clients over and revoking the old one. Removing a tenant revokes
//! its tokens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Tokens a tenant may hold at once (the one in use and its successor).
pub const MAX_TOKENS: usize = 2;

/// The file in the data directory.
const FILE: &str = "tenant-tokens.json";

/// One token as kept: never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Names the token (for listing and revoking); not secret.
    pub id: String,
    /// The SHA-256 of the token, hex.
    pub sha256: String,
    /// When it was made, in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// Why a token could not be made or revoked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The gateway keeps no data directory.
    #[error("tenant tokens are kept (hashed) in the data directory; set admin.data_dir")]
    NoDataDir,
    /// The tenant holds [`MAX_TOKENS`] already.
    #[error(
        "tenant {0:?} holds {MAX_TOKENS} tokens already; revoke one (DELETE /tenants/NAME/tokens/ID) before making another"
    )]
    Full(String),
    /// No such token.
    #[error("tenant {0:?} has no token {1:?}")]
    Unknown(String, String),
    /// Writing the file failed.
    #[error("{0}")]
    Io(String),
}

/// Every tenant's tokens.
#[derive(Debug)]
pub struct TenantTokens {
    /// Where they are kept (`None`: no data directory, no tokens).
    path: Option<PathBuf>,
    tokens: Mutex<BTreeMap<String, Vec<TokenRecord>>>,
}

fn sha256(token: &str) -> String {
    wasmgate_engine::sha256_hex(token.as_bytes())
}

fn random_hex(bytes: usize) -> Result<String, TokenError> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| TokenError::Io(format!("no randomness: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl TenantTokens {
    /// The tokens kept in `data_dir` (none when there is no such file yet,
    /// or no data directory).
    pub fn open(data_dir: Option<&Path>) -> Result<TenantTokens, String> {
        let path = data_dir.map(|d| d.join(FILE));
        let tokens = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| format!("{} is not a token file: {e}", p.display()))?
            }
            _ => BTreeMap::new(),
        };
        Ok(TenantTokens {
            path,
            tokens: Mutex::new(tokens),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<TokenRecord>>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, tokens: &BTreeMap<String, Vec<TokenRecord>>) -> Result<(), TokenError> {
        let Some(path) = &self.path else {
            return Err(TokenError::NoDataDir);
        };
        let text =
            serde_json::to_string_pretty(tokens).map_err(|e| TokenError::Io(e.to_string()))?;
        crate::store::write_atomic(path, text.as_bytes())
            .map_err(|e| TokenError::Io(format!("cannot write {}: {e}", path.display())))
    }

    /// Makes a token for `tenant`: its id and the token, which is shown
    /// this once.
    pub fn create(&self, tenant: &str) -> Result<(String, String), TokenError> {
        if self.path.is_none() {
            return Err(TokenError::NoDataDir);
        }
        let mut tokens = self.lock();
        let held = tokens.get(tenant).map_or(0, Vec::len);
        if held >= MAX_TOKENS {
            return Err(TokenError::Full(tenant.to_owned()));
        }
        let token = format!("wgt_{}", random_hex(32)?);
        let id = random_hex(6)?;
        let created_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut next = tokens.clone();
        next.entry(tenant.to_owned())
            .or_default()
            .push(TokenRecord {
                id: id.clone(),
                sha256: sha256(&token),
                created_ms,
            });
        self.save(&next)?;
        *tokens = next;
        Ok((id, token))
    }

    /// Revokes `tenant`'s token `id`.
    pub fn revoke(&self, tenant: &str, id: &str) -> Result<(), TokenError> {
        let mut tokens = self.lock();
        let mut next = tokens.clone();
        let list = next.entry(tenant.to_owned()).or_default();
        let before = list.len();
        list.retain(|t| t.id != id);
        if list.len() == before {
            return Err(TokenError::Unknown(tenant.to_owned(), id.to_owned()));
        }
        if list.is_empty() {
            next.remove(tenant);
        }
        self.save(&next)?;
        *tokens = next;
        Ok(())
    }

    /// Revokes every token of `tenant` (it was removed).
    pub fn forget(&self, tenant: &str) -> Result<(), TokenError> {
        let mut tokens = self.lock();
        if !tokens.contains_key(tenant) {
            return Ok(());
        }
        let mut next = tokens.clone();
        next.remove(tenant);
        self.save(&next)?;
        *tokens = next;
        Ok(())
    }

    /// `tenant`'s tokens (ids and when they were made).
    pub fn list(&self, tenant: &str) -> Vec<TokenRecord> {
        self.lock().get(tenant).cloned().unwrap_or_default()
    }

    /// The tenant `token` belongs to, if any.
    pub fn tenant_of(&self, token: &str) -> Option<String> {
        let hash = sha256(token);
        self.lock()
            .iter()
            .find(|(_, list)| {
                list.iter()
                    .any(|t| crate::admin::constant_time_eq(t.sha256.as_bytes(), hash.as_bytes()))
            })
            .map(|(tenant, _)| tenant.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_kept_hashed_rotated_by_two_and_revoked() {
        let dir = std::env::temp_dir().join(format!("wasmgate-tokens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let t = TenantTokens::open(Some(&dir)).unwrap();
        let (id1, tok1) = t.create("shop").unwrap();
        let (_, tok2) = t.create("shop").unwrap();
        assert!(matches!(t.create("shop"), Err(TokenError::Full(_))));
        assert_eq!(t.tenant_of(&tok1).as_deref(), Some("shop"));
        assert_eq!(t.tenant_of(&tok2).as_deref(), Some("shop"));
        assert_eq!(t.tenant_of("wgt_nope"), None);
        let kept = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert!(!kept.contains(&tok1) && !kept.contains(&tok2), "{kept}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        // Kept across a restart.
        let again = TenantTokens::open(Some(&dir)).unwrap();
        assert_eq!(again.tenant_of(&tok1).as_deref(), Some("shop"));
        again.revoke("shop", &id1).unwrap();
        assert_eq!(again.tenant_of(&tok1), None);
        assert_eq!(again.tenant_of(&tok2).as_deref(), Some("shop"));
        assert!(matches!(
            again.revoke("shop", &id1),
            Err(TokenError::Unknown(..))
        ));
        again.forget("shop").unwrap();
        assert_eq!(again.tenant_of(&tok2), None);
        // No data directory, no tokens.
        let none = TenantTokens::open(None).unwrap();
        assert!(matches!(none.create("shop"), Err(TokenError::NoDataDir)));
    }
}
