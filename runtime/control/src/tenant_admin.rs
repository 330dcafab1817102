//! The tenants' part of the admin API, `/tenants[/NAME[/...]]`.
//!
//! The operator's token reaches every tenant: it lists them, puts and
//! removes API-managed ones, and makes and revokes their tokens. A tenant's
//! token reaches its own tenant only (`GET /tenants/NAME`,
//! `GET|PUT /tenants/NAME/config`, `PUT /tenants/NAME/uploads` (a file its
//! config names as `upload:<sha256>`: an API-managed tenant names no file
//! on the host), `GET /tenants/NAME/metrics`, and its
//! filters' versions: `GET /tenants/NAME/filters/F`, `PUT .../module`,
//! `PUT .../canary`, `POST .../activate|promote|rollback`, as
//! `/filters/F/...` does for the operator's own); anything
//! else it asks for, another tenant's included, is the same 404 as a path
//! that does not exist, so it cannot even learn which tenants exist.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::admin::{AdminState, MAX_CONFIG_SIZE, body_error, config_errors, json};
use crate::live::TenantChangeError;
use wasmgate_config::{ConfigErrors, Managed, TenantConfig};
use wasmgate_proxy::body::{self, ProxyBody};
use wasmgate_proxy::error::GatewayError;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator (the admin token, or no token configured).
    Operator,
    /// A tenant, by one of its tokens.
    Tenant(String),
    /// No valid token.
    Nobody,
}

/// The answer to a path a caller may not see: the same as for a path that
/// does not exist.
pub(crate) fn not_found(path: &str) -> Response<ProxyBody> {
    GatewayError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no admin endpoint {path}"),
    )
    .into_response(None)
}

fn refusal(status: StatusCode, code: &'static str, message: String) -> Response<ProxyBody> {
    GatewayError::new(status, code, message).into_response(None)
}

/// Where the files an API-managed tenant uploaded are kept: its folder
/// under `uploads/` in the data directory (`None`: no data directory).
pub(crate) fn uploads_dir(
    config: &wasmgate_config::Config,
    tenant: &str,
) -> Option<std::path::PathBuf> {
    let dir = config.admin.as_ref()?.data_dir.as_ref()?;
    Some(dir.join("uploads").join(tenant))
}

/// Whether `action` on a filter takes `method` (as `/filters/NAME/ACTION`).
fn filter_action(method: &Method, action: &str) -> bool {
    matches!(
        (method, action),
        (&Method::PUT, "module" | "canary") | (&Method::POST, "activate" | "promote" | "rollback")
    )
}

fn change_error(e: TenantChangeError) -> Response<ProxyBody> {
    match e {
        TenantChangeError::Invalid(e) => config_errors(e),
        TenantChangeError::Unknown(_) => {
            refusal(StatusCode::NOT_FOUND, "unknown_tenant", e.to_string())
        }
        TenantChangeError::FileManaged(_) | TenantChangeError::NoTenancy => {
            refusal(StatusCode::CONFLICT, "conflict", e.to_string())
        }
    }
}

impl AdminState {
    /// Answers a request under `/tenants`.
    pub(crate) async fn tenants(
        &self,
        req: Request<Incoming>,
        caller: Caller,
    ) -> Response<ProxyBody> {
        let path = req.uri().path().to_owned();
        if caller == Caller::Nobody {
            return self.unauthorized();
        }
        let rest = path.strip_prefix("/tenants").unwrap_or_default();
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        let operator = caller == Caller::Operator;
        // A tenant's name is a plain name (it names a folder for uploads).
        if let Some(n) = parts.first()
            && !wasmgate_config::tenant::is_tenant_name(n)
        {
            return match operator {
                true => GatewayError::bad_request(format!(
                    "{n:?} is not a tenant name: lower-case letters, digits and single inner '-'"
                ))
                .into_response(None),
                false => not_found(&path),
            };
        }
        // A tenant's token: its own tenant, and only these.
        if let Caller::Tenant(own) = &caller {
            let allowed = match (req.method(), parts.as_slice()) {
                (&Method::GET, [n]) => n == own,
                (&Method::GET | &Method::PUT, [n, "config"]) => n == own,
                (&Method::GET, [n, "metrics"]) => n == own,
                (&Method::GET, [n, "filters", _]) => n == own,
                (&Method::PUT, [n, "uploads"]) => n == own,
                (&Method::POST, [n, "cache", "purge"]) => n == own,
                (m, [n, "filters", _, action]) => n == own && filter_action(m, action),
                _ => false,
            };
            if !allowed {
                return not_found(&path);
            }
        }
        let config = self.live.config();
        let exists = |n: &str| config.tenants.contains_key(n);
        match (req.method().clone(), parts.as_slice()) {
            (Method::GET, []) if operator => {
                let tenants: Vec<serde_json::Value> = config
                    .tenants
                    .values()
                    .map(|t| self.report(t, false))
                    .collect();
                json(StatusCode::OK, serde_json::json!({ "tenants": tenants }))
            }
            (Method::GET, [n]) if exists(n) => {
                json(StatusCode::OK, self.report(&config.tenants[*n], operator))
            }
            (Method::DELETE, [n]) if operator => match self.live.remove_tenant(n).await {
                Ok(()) => json(StatusCode::OK, serde_json::json!({ "status": "removed" })),
                Err(e) => change_error(e),
            },
            (Method::GET, [n, "config"]) if exists(n) => {
                let mut resp = Response::new(body::full(config.tenants[*n].text.clone()));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/toml"),
                );
                resp
            }
            (Method::PUT, [n, "config"]) => {
                let name = (*n).to_owned();
                drop(config);
                self.put_config(&name, req).await
            }
            (Method::GET, [n, "metrics"]) if exists(n) => {
                self.live.sample_metrics();
                let needle = format!("tenant=\"{n}\"");
                let mut text: String = self
                    .live
                    .proxy()
                    .metrics_text()
                    .lines()
                    .filter(|l| l.contains(&needle))
                    .flat_map(|l| [l, "\n"])
                    .collect();
                text.push_str("# EOF\n");
                let mut resp = Response::new(body::full(text));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            (Method::GET, [n, "filters", f]) if exists(n) => {
                let key = wasmgate_config::Scoped::new(
                    wasmgate_config::TenantId(std::sync::Arc::from(*n)),
                    *f,
                )
                .key();
                match self.live.filter_report(&key) {
                    serde_json::Value::Null => refusal(
                        StatusCode::NOT_FOUND,
                        "unknown_filter",
                        format!("tenant {n:?} has no filter {f:?}"),
                    ),
                    report => json(StatusCode::OK, report),
                }
            }
            (m, [n, "filters", f, action]) if exists(n) && filter_action(&m, action) => {
                let key = wasmgate_config::Scoped::new(
                    wasmgate_config::TenantId(std::sync::Arc::from(*n)),
                    *f,
                )
                .key();
                let action = (*action).to_owned();
                drop(config);
                self.filter_change(&key, &action, req).await
            }
            (Method::PUT, [n, "uploads"]) => {
                let name = (*n).to_owned();
                let managed_by_file = config
                    .tenants
                    .get(&name)
                    .is_some_and(|t| t.managed != Managed::Api);
                let dir = uploads_dir(&config, &name);
                drop(config);
                if managed_by_file {
                    return change_error(TenantChangeError::FileManaged(name));
                }
                let Some(dir) = dir else {
                    return refusal(
                        StatusCode::CONFLICT,
                        "conflict",
                        "uploads are kept in the data directory; set admin.data_dir".into(),
                    );
                };
                self.upload(&name, &dir, req).await
            }
            (Method::POST, [n, "cache", "purge"]) if exists(n) => {
                let name = (*n).to_owned();
                drop(config);
                self.purge(Some(&name), req).await
            }
            (Method::GET, [n, "tokens"]) if operator && exists(n) => json(
                StatusCode::OK,
                serde_json::json!({ "tokens": self.live.tokens().list(n).iter().map(|t| {
                    serde_json::json!({ "id": t.id, "created_ms": t.created_ms })
                }).collect::<Vec<_>>() }),
            ),
            (Method::POST, [n, "tokens"]) if operator && exists(n) => {
                match self.live.tokens().create(n) {
                    Ok((id, token)) => {
                        tracing::info!(tenant = *n, id = id.as_str(), "tenant token made");
                        json(
                            StatusCode::CREATED,
                            serde_json::json!({ "id": id, "token": token,
                                "note": "shown this once; only its hash is kept" }),
                        )
                    }
                    Err(e @ crate::tokens::TokenError::Io(_)) => refusal(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "data_dir_unwritable",
                        e.to_string(),
                    ),
                    Err(e) => refusal(StatusCode::CONFLICT, "conflict", e.to_string()),
                }
            }
            (Method::DELETE, [n, "tokens", id]) if operator && exists(n) => {
                match self.live.tokens().revoke(n, id) {
                    Ok(()) => {
                        tracing::info!(tenant = *n, id = *id, "tenant token revoked");
                        json(StatusCode::OK, serde_json::json!({ "status": "revoked" }))
                    }
                    Err(e @ crate::tokens::TokenError::Unknown(..)) => {
                        refusal(StatusCode::NOT_FOUND, "unknown_token", e.to_string())
                    }
                    Err(e) => refusal(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "data_dir_unwritable",
                        e.to_string(),
                    ),
                }
            }
            (_, [n, ..]) if operator && !exists(n) => refusal(
                StatusCode::NOT_FOUND,
                "unknown_tenant",
                format!("no tenant {n:?}"),
            ),
            _ => not_found(&path),
        }
    }

    /// `PUT /tenants/NAME/config`: an API-managed tenant, added or replaced.
    async fn put_config(&self, name: &str, req: Request<Incoming>) -> Response<ProxyBody> {
        let source = format!("PUT /tenants/{name}/config");
        let bytes = match body::collect(req.into_body(), MAX_CONFIG_SIZE).await {
            Ok(k) => k.data,
            Err(e) => return body_error(e, MAX_CONFIG_SIZE),
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return GatewayError::bad_request("the tenant's config must be UTF-8 TOML")
                .into_response(None);
        };
        let config = self.live.config();
        // Who manages it decides before what it says.
        if config.tenancy.is_none() {
            return change_error(TenantChangeError::NoTenancy);
        }
        if config
            .tenants
            .get(name)
            .is_some_and(|t| t.managed != Managed::Api)
        {
            return change_error(TenantChangeError::FileManaged(name.to_owned()));
        }
        // Files it names are its uploads (a folder that does not exist
        // without a data directory: none then).
        let uploads = uploads_dir(&config, name)
            .unwrap_or_else(|| std::path::PathBuf::from("/nonexistent/wasmgate-uploads"));
        let parsed =
            TenantConfig::parse(name, text, &source, &uploads, Managed::Api, &config.engine)
                .and_then(|mut t| {
                    let errors = t.resolve_uploads(&uploads);
                    if errors.is_empty() {
                        Ok(t)
                    } else {
                        Err(ConfigErrors {
                            source: source.clone(),
                            errors,
                        })
                    }
                });
        drop(config);
        match parsed {
            Err(e) => config_errors(e),
            Ok(t) => match self.live.put_tenant(t).await {
                Ok(()) => json(StatusCode::OK, serde_json::json!({ "status": "applied" })),
                Err(e) => change_error(e),
            },
        }
    }

    /// `PUT /tenants/NAME/uploads`: a file (a filter module, a certificate
    /// or key) kept by its SHA-256 in the tenant's uploads folder, for its
    /// config to name as `upload:<sha256>`.
    async fn upload(
        &self,
        tenant: &str,
        dir: &std::path::Path,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let limit = crate::live::MAX_MODULE_SIZE;
        let bytes = match body::collect(req.into_body(), limit).await {
            Ok(k) => k.data,
            Err(e) => return body_error(e, limit),
        };
        let sha = wasmgate_engine::sha256_hex(&bytes);
        let (dir, path) = (dir.to_owned(), dir.join(&sha));
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            }
            if path.is_file() {
                return Ok(());
            }
            crate::store::write_atomic(&path, &bytes)
        })
        .await;
        match written {
            Ok(Ok(())) => {
                tracing::info!(tenant, sha256 = &sha[..16], "tenant upload kept");
                json(
                    StatusCode::OK,
                    serde_json::json!({
                        "sha256": sha,
                        "ref": format!("{}{sha}", wasmgate_config::tenant::UPLOAD_PREFIX),
                    }),
                )
            }
            Ok(Err(e)) => refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "data_dir_unwritable",
                format!("the upload could not be kept: {e}"),
            ),
            Err(e) => refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }

    /// What a tenant is made of (with its tokens, for the operator).
    fn report(&self, t: &TenantConfig, tokens: bool) -> serde_json::Value {
        let mut v = serde_json::json!({
            "name": t.name,
            "managed": match t.managed { Managed::File(_) => "file", Managed::Api => "api" },
            "hosts": t.hosts,
            "routes": t.routes.iter().map(|r| &r.name).collect::<Vec<_>>(),
            "clusters": t.clusters.keys().collect::<Vec<_>>(),
            "filters": t.filters.keys().collect::<Vec<_>>(),
        });
        if tokens {
            v["tokens"] = self
                .live
                .tokens()
                .list(&t.name)
                .iter()
                .map(|t| serde_json::json!({ "id": t.id, "created_ms": t.created_ms }))
                .collect();
        }
        v
    }
}
