//! What a config put through the admin API may reach on the host.
//!
//! Holding the admin token lets someone replace the routing config; it does
//! not make them the machine's owner. A config names host files (filter
//! modules, `vars` files, cluster TLS roots and client keys, descriptor
//! sets, the access log)
//! and environment variables (`vars`), and the gateway reads them with its
//! own rights. So a config put through the API may name only:
//!
//! - what the config file itself names (the operator's choice), and
//! - files under the folders of `admin.api_paths`, and the environment
//!   variables in `admin.api_env` (both in the file, so only the operator
//!   widens them; none by default);
//!
//! and its `[access_log]` must be the file's. Nothing outside is touched
//! before the check (not even to see whether it exists): the caller parses
//! with [`Config::parse_without_secrets`], checks, and only then reads
//! secrets and builds. Modules for new versions go through
//! `PUT /filters/NAME/module` instead.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use crate::secret::SecretSource;
use crate::{Config, ConfigError};

/// One thing on the host a config names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reach {
    /// A file (resolved against the config's folder).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl Config {
    /// Every file and environment variable this config names, each with
    /// the key path that names it (the access log aside: see
    /// [`Config::api_reach_errors`]).
    pub fn reach(&self) -> Vec<(String, Reach)> {
        let mut out = Vec::new();
        for (name, f) in &self.filters {
            out.push((format!("filters.{name}.path"), Reach::File(f.path.clone())));
            for (var, setting) in &f.vars {
                let key = format!("filters.{name}.vars.{var}");
                match setting.source() {
                    SecretSource::Literal => {}
                    SecretSource::Env(e) => out.push((key, Reach::Env(e.clone()))),
                    SecretSource::File(p) => out.push((key, Reach::File(p.clone()))),
                }
            }
        }
        for (name, c) in &self.clusters {
            let Some(tls) = &c.tls else { continue };
            if let Some(ca) = &tls.ca {
                out.push((format!("clusters.{name}.tls.ca"), Reach::File(ca.clone())));
            }
            if let Some((cert, key)) = &tls.client_cert {
                out.push((
                    format!("clusters.{name}.tls.client_cert"),
                    Reach::File(cert.clone()),
                ));
                out.push((
                    format!("clusters.{name}.tls.client_key"),
                    Reach::File(key.clone()),
                ));
            }
        }
        for (name, d) in &self.descriptors {
            out.push((
                format!("descriptors.{name}.path"),
                Reach::File(d.path.clone()),
            ));
        }
        out
    }

    /// What this config, put through the admin API, names beyond what the
    /// config file `file` allows (see the module docs); empty if nothing.
    pub fn api_reach_errors(&self, file: &Config) -> Vec<ConfigError> {
        let named: HashSet<Reach> = file.reach().into_iter().map(|(_, r)| r).collect();
        let (dirs, envs) = file.admin.as_ref().map_or((&[][..], &[][..]), |a| {
            (a.api_paths.as_slice(), a.api_env.as_slice())
        });
        let mut errors = Vec::new();
        for (key, reach) in self.reach() {
            if named.contains(&reach) {
                continue;
            }
            match &reach {
                Reach::File(path) => {
                    if let Err(why) = under_any(path, dirs) {
                        errors.push(ConfigError::new(
                            key,
                            format!(
                                "{}: {why}; a config put through the admin API may name only the files \
                                 the config file names and those under admin.api_paths \
                                 (upload filter modules with PUT /filters/NAME/module, descriptor sets with PUT /descriptors/NAME)",
                                path.display()
                            ),
                        ));
                    }
                }
                Reach::Env(name) => {
                    if !envs.iter().any(|e| e == name) {
                        errors.push(ConfigError::new(
                            key,
                            format!(
                                "environment variable {name:?}: a config put through the admin API may \
                                 name only the variables the config file names and those in admin.api_env"
                            ),
                        ));
                    }
                }
            }
        }
        if self.access_log != file.access_log {
            errors.push(ConfigError::new(
                "access_log",
                "is set in the config file only: a config put through the admin API keeps the file's \
                 [access_log] (it names a file the gateway writes)",
            ));
        }
        errors
    }
}

/// Whether `path` lies in one of `dirs`: lexically (no `..` anywhere), and,
/// if it exists, once symlinks are resolved too.
fn under_any(path: &Path, dirs: &[PathBuf]) -> Result<(), &'static str> {
    if dirs.is_empty() {
        return Err("admin.api_paths allows no folder");
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err("a path with `..` is never allowed");
    }
    let Some(dir) = dirs.iter().find(|d| path.starts_with(d)) else {
        return Err("not under admin.api_paths");
    };
    // Only now, inside an allowed folder, may the file system be asked.
    if let (Ok(real), Ok(real_dir)) = (path.canonicalize(), dir.canonicalize())
        && !real.starts_with(&real_dir)
    {
        return Err("it resolves (through a symbolic link) outside admin.api_paths");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse_without_secrets(text, "t.toml", Path::new("/srv/gw")).unwrap()
    }

    const FILE: &str = "[admin]\napi_paths = [\"modules\"]\napi_env = [\"API_OK\"]\n\
        [filters.a]\npath = \"a.wasm\"\nvars = { k = { env = \"FILE_VAR\" } }\n\
        [clusters.c]\nendpoints = [\"127.0.0.1:1\"]\ntls = { ca = \"ca.pem\" }\n\
        [[routes]]\nname = \"r\"\ncluster = \"c\"\nfilters = [{ name = \"a\" }]\n";

    #[test]
    fn what_the_file_names_and_what_it_allows_may_be_named() {
        let file = parse(FILE);
        assert!(file.api_reach_errors(&file).is_empty());
        let api = parse(&FILE.replace(
            "[clusters.c]",
            "[filters.b]\npath = \"modules/b.wasm\"\nvars = { x = { env = \"API_OK\" } }\n[clusters.c]",
        ));
        assert_eq!(api.api_reach_errors(&file), []);
    }

    #[test]
    fn anything_else_is_refused_by_its_key() {
        let file = parse(FILE);
        let api = parse(
            &(FILE
                .replace(
                    "[clusters.c]",
                    "[filters.b]\npath = \"/etc/passwd\"\nvars = { x = { env = \"AWS_SECRET\" }, y = { file = \"/root/.ssh/id_rsa\" } }\n\
                     [filters.d]\npath = \"modules/../../etc/x.wasm\"\n[clusters.c]",
                )
                .replace("ca = \"ca.pem\"", "ca = \"/etc/ssl/private/other.pem\"")
                + "[access_log]\npath = \"/etc/cron.d/x\"\n"),
        );
        let errors = api.api_reach_errors(&file);
        let keys: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            keys,
            [
                "filters.b.path",
                "filters.b.vars.x",
                "filters.b.vars.y",
                "filters.d.path",
                "clusters.c.tls.ca",
                "access_log"
            ],
            "{errors:?}"
        );
        assert!(
            errors[0].message.contains("admin.api_paths"),
            "{}",
            errors[0].message
        );
        assert!(
            errors[1].message.contains("AWS_SECRET"),
            "{}",
            errors[1].message
        );
        assert!(errors[3].message.contains(".."), "{}", errors[3].message);
    }

    #[test]
    fn without_api_paths_no_new_file_may_be_named() {
        let file = parse(&FILE.replace("api_paths = [\"modules\"]\n", ""));
        let api = parse(&FILE.replace("a.wasm", "modules/a2.wasm"));
        let errors = api.api_reach_errors(&file);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.contains("allows no folder"),
            "{}",
            errors[0].message
        );
    }
}
