//! `wasmgate filter …`: the filter author's tools, on the gateway's own
//! filter engine and contract (no gateway running, no network). `inspect`
//! says what a component is and whether this gateway loads it; `new` makes
//! a project, `wit` writes the contract, and `bindings` and `componentize`
//! are the two steps of a C build that need the component model's
//! libraries.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{EngineConfig, Scoped, TenantId};
use crate::filter::edits::{Interest, Needs};
use crate::filter::inspect::{ComponentSummary, host_provides};
use crate::filter::{FilterEngine, FilterLimits};

/// The limits a filter is inspected under: the gateway's defaults.
fn limits() -> FilterLimits {
    FilterLimits {
        memory: crate::config::filter::DEFAULT_FILTER_MEMORY,
        cpu: crate::config::filter::DEFAULT_FILTER_CPU,
        wall: Duration::from_secs(5),
    }
}

/// What `inspect` found.
struct Inspection {
    summary: ComponentSummary,
    /// `Err`: why this gateway refuses it.
    loads: Result<(), String>,
    /// What `init` declared with the config given; `None` when it did not load.
    init: Option<Result<Needs, String>>,
}

async fn inspection(
    engine: &FilterEngine,
    path: &Path,
    config: &str,
) -> Result<Inspection, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let origin = path.display().to_string();
    let summary = engine
        .summarize(&origin, &bytes)
        .map_err(|e| e.to_string())?;
    let name = Scoped::new(TenantId::default_tenant(), "inspected");
    let (loads, init) = match engine.load_bytes(&name, &origin, &bytes, limits()) {
        Err(e) => (Err(e.to_string()), None),
        Ok(module) => {
            let route: Arc<str> = Arc::from("inspect");
            let init = match module.probe(&route, config).await {
                Ok(declared) => declared,
                Err(failure) => Err(format!("init failed: {failure}")),
            };
            (Ok(()), Some(init))
        }
    };
    Ok(Inspection {
        summary,
        loads,
        init,
    })
}

fn interest(i: &Interest) -> serde_json::Value {
    match i {
        Interest::None => serde_json::json!([]),
        Interest::All => serde_json::json!("all"),
        Interest::Names(n) => serde_json::json!(n.iter().map(|h| h.as_str()).collect::<Vec<_>>()),
    }
}

fn needs_json(n: &Needs) -> serde_json::Value {
    serde_json::json!({
        "on_request": n.on_request,
        "on_response": n.on_response,
        "request_body": n.request_body,
        "response_body": n.response_body,
        "request_headers_on_response": n.request_headers_on_response,
        "request_headers": interest(&n.request_headers),
        "response_headers": interest(&n.response_headers),
    })
}

impl Inspection {
    fn json(&self, config: &str) -> serde_json::Value {
        let s = &self.summary;
        serde_json::json!({
            "size": s.size,
            "sha256": s.sha256,
            "contract": s.contract,
            "loads": self.loads.is_ok(),
            "refused_because": self.loads.as_ref().err(),
            "imports": s.imports.iter().map(|i| serde_json::json!({
                "name": i, "provided": host_provides(i),
            })).collect::<Vec<_>>(),
            "exports": s.exports,
            "memories": s.memories,
            "initial_memory_bytes": s.initial_memory,
            "tables": s.tables,
            "core_instances": s.core_instances,
            "config": config,
            "init": match &self.init {
                None => serde_json::Value::Null,
                Some(Ok(n)) => needs_json(n),
                Some(Err(e)) => serde_json::json!({ "error": e }),
            },
        })
    }

    fn text(&self, path: &Path, config: &str) -> String {
        use std::fmt::Write;
        let s = &self.summary;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} bytes, sha256 {}",
            path.display(),
            s.size,
            s.sha256
        );
        let _ = writeln!(
            out,
            "contract: {}",
            match &s.contract {
                Some(v) => format!("wasmgate:filter@{v} (this gateway serves 0.2.x and 0.1.x)"),
                None => "none: it exports no wasmgate:filter/filter".into(),
            }
        );
        match &self.loads {
            Ok(()) => out.push_str("loads: yes\n"),
            Err(e) => {
                let _ = writeln!(out, "loads: NO: {e}");
            }
        }
        out.push_str("imports:\n");
        for i in &s.imports {
            let verdict = if host_provides(i) {
                "provided"
            } else {
                "REFUSED: this gateway does not provide it"
            };
            let _ = writeln!(out, "  {i:<48} {verdict}");
        }
        let _ = writeln!(out, "exports: {}", s.exports.join(", "));
        let _ = writeln!(
            out,
            "memories: {} (largest initial size {} KiB), tables: {}, core instances: {}",
            s.memories,
            s.initial_memory / 1024,
            s.tables,
            s.core_instances
        );
        match &self.init {
            None => {}
            Some(Err(e)) => {
                let _ = writeln!(out, "init with config {config}: refused: {e}");
            }
            Some(Ok(n)) => {
                let _ = writeln!(out, "init with config {config}: ok");
                let phases: Vec<&str> =
                    [(n.on_request, "on-request"), (n.on_response, "on-response")]
                        .into_iter()
                        .filter_map(|(on, p)| on.then_some(p))
                        .collect();
                let _ = writeln!(
                    out,
                    "  phases called: {}",
                    if phases.is_empty() {
                        "none (the filter is never called)".to_owned()
                    } else {
                        phases.join(", ")
                    }
                );
                let yes = |b: bool| if b { "yes" } else { "no" };
                let _ = writeln!(
                    out,
                    "  buffers the request body: {}, the response body: {}",
                    yes(n.request_body),
                    yes(n.response_body)
                );
                let _ = writeln!(
                    out,
                    "  keeps the request's headers for on-response: {}",
                    yes(n.request_headers_on_response)
                );
                let shown = |i: &Interest| match i {
                    Interest::None => "none (it reads those it asks for, one call each)".to_owned(),
                    Interest::All => "all".to_owned(),
                    Interest::Names(n) => {
                        n.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", ")
                    }
                };
                let _ = writeln!(
                    out,
                    "  request headers copied into each call: {}",
                    shown(&n.request_headers)
                );
                let _ = writeln!(
                    out,
                    "  response headers copied into each call: {}",
                    shown(&n.response_headers)
                );
            }
        }
        out
    }
}

/// What loading and starting a filter costs, from `inspect --timings`.
#[derive(Debug, Clone, Copy)]
struct Timings {
    /// Loading it with an empty compile cache (compiling it).
    compile_ms: f64,
    /// Loading it again, by a new engine, from the compile cache.
    cached_load_ms: f64,
    /// A new instance and its `init` with the config: the median of
    /// [`INSTANTIATIONS`].
    instantiate_ms: f64,
}

/// Instances made to time instantiation.
const INSTANTIATIONS: usize = 21;

/// Times a filter's load (compiled, then from a compile cache of its own,
/// removed after) and its instantiation with `config`.
async fn timings(path: &Path, config: &str) -> Result<Timings, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = std::env::temp_dir().join(format!("wasmgate-timings-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cfg = EngineConfig {
        cache_dir: Some(dir.clone()),
        ..EngineConfig::default()
    };
    let name = Scoped::new(TenantId::default_tenant(), "timed");
    let origin = path.display().to_string();
    let measured = async {
        let load = |engine: &FilterEngine| {
            let started = std::time::Instant::now();
            engine
                .load_bytes(&name, &origin, &bytes, limits())
                .map(|m| (m, started.elapsed().as_secs_f64() * 1e3))
                .map_err(|e| e.to_string())
        };
        let first = FilterEngine::new(&cfg).map_err(|e| format!("{e:#}"))?;
        let (_, compile_ms) = load(&first)?;
        drop(first);
        let second = FilterEngine::new(&cfg).map_err(|e| format!("{e:#}"))?;
        let (module, cached_load_ms) = load(&second)?;
        let route: Arc<str> = Arc::from("inspect");
        let mut runs = Vec::with_capacity(INSTANTIATIONS);
        for _ in 0..INSTANTIATIONS {
            let started = std::time::Instant::now();
            let instance = module
                .instantiate(&route, config)
                .await
                .map_err(|e| format!("instantiating: {e}"))?;
            runs.push(started.elapsed().as_secs_f64() * 1e3);
            drop(instance);
        }
        runs.sort_by(f64::total_cmp);
        Ok(Timings {
            compile_ms,
            cached_load_ms,
            instantiate_ms: runs[runs.len() / 2],
        })
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

/// `wasmgate filter inspect FILTER.wasm [--config JSON] [--json]
/// [--timings]`: exit 0 when this gateway loads the component and its
/// `init` accepts the config, 1 otherwise. `--timings` also times its load
/// (compiled, and from the compile cache) and its instantiation.
pub async fn inspect(path: &Path, config: &str, json: bool, timed: bool) -> ExitCode {
    let engine = match FilterEngine::new(&EngineConfig::default()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot start the filter engine: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let found = match inspection(&engine, path, config).await {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ok = found.loads.is_ok() && matches!(found.init, Some(Ok(_)));
    let timed = match (timed, ok) {
        (true, true) => match timings(path, config).await {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: timing it: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    if json {
        let mut out = found.json(config);
        if let Some(t) = timed {
            out["timings"] = serde_json::json!({
                "compile_ms": t.compile_ms,
                "cached_load_ms": t.cached_load_ms,
                "instantiate_ms": t.instantiate_ms,
            });
        }
        println!("{out:#}");
    } else {
        print!("{}", found.text(path, config));
        if let Some(t) = timed {
            println!(
                "timings: compile {:.1} ms, load from the compile cache {:.1} ms, \
                 new instance + init {:.3} ms (median of {INSTANTIATIONS})",
                t.compile_ms, t.cached_load_ms, t.instantiate_ms
            );
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The contract this gateway serves, embedded so that the tools work
/// without the repository.
pub const CONTRACT_WIT: &str = include_str!("../../../wit/filter.wit");

/// `wasmgate filter bindings --lang c --out DIR`: C bindings for the
/// contract (`plugin.h`, `plugin.c` and `plugin_component_type.o`, the
/// world's type to link into the core module), with `wit-bindgen-c`.
pub fn bindings_c(out: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use anyhow::Context;
    use wit_bindgen_core::wit_parser::Resolve;
    let mut resolve = Resolve::default();
    let pkg = resolve
        .push_str("filter.wit", CONTRACT_WIT)
        .context("the embedded contract")?;
    let world = resolve.select_world(&[pkg], Some("plugin"))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for (name, contents) in files.iter() {
        let path = out.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// `wasmgate filter componentize CORE.wasm -o FILTER.wasm`: a core module
/// built against the bindings (its world's type linked in) made a
/// component, with the WASI preview1 reactor adapter of this gateway's
/// wasmtime (embedded only if the module calls WASI).
pub fn componentize(core: &Path, out: &Path) -> anyhow::Result<usize> {
    use anyhow::Context;
    use wasi_preview1_component_adapter_provider::{
        WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    };
    let module = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .with_context(|| {
            format!(
                "{}: not a core module built against the bindings (is plugin_component_type.o linked in?)",
                core.display()
            )
        })?
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .encode()
        .context("encoding the component")?;
    // A module that does not export the filter interface makes a
    // component, but not one a gateway loads: say so here.
    let exports_filter = match wit_component::decode(&component) {
        Ok(wit_component::DecodedWasm::Component(resolve, world)) => {
            resolve.worlds[world].exports.keys().any(|k| {
                let name = resolve.name_world_key(k);
                name.starts_with("wasmgate:filter/filter@")
            })
        }
        _ => false,
    };
    if !exports_filter {
        anyhow::bail!(
            "{}: exports no wasmgate:filter/filter interface; build it against the \
             bindings of `wasmgate filter bindings` and link plugin_component_type.o in",
            core.display()
        );
    }
    std::fs::write(out, &component).with_context(|| format!("writing {}", out.display()))?;
    Ok(component.len())
}

/// A scaffold's files: `(path in the project, contents)`, with `{{name}}`
/// and `{{crate}}` filled in.
fn scaffold(lang: &str, name: &str) -> Result<Vec<(&'static str, String)>, String> {
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
    };
    let cases = fill(include_str!("../templates/cases.toml"));
    let readme = |build: &str, wasm: &str| {
        format!(
            "# {name}\n\nA wasmgate filter, made by `wasmgate filter new {name} --lang {lang}`.\n\n\
             ## Build\n\n```sh\n{build}\n```\n\n\
             ## Check and test\n\n```sh\nwasmgate filter inspect {wasm} --config '{{}}'\n\
             wasmgate filter test {wasm} cases.toml\n```\n\n\
             `cases.toml` runs the filter offline on the gateway's own engine: add a case \
             for each behaviour.\n\n## Configure\n\n\
             ```toml\n[filters.{name}]\npath = \"{wasm}\"\n\n[[routes]]\nname = \"api\"\ncluster = \"api\"\n\
             filters = [{{ name = \"{name}\" }}]\n```\n"
        )
    };
    match lang {
        "rust" => Ok(vec![
            (
                "Cargo.toml",
                fill(include_str!("../templates/rust/Cargo.toml")),
            ),
            ("src/lib.rs", fill(include_str!("../templates/rust/lib.rs"))),
            ("wit/filter.wit", CONTRACT_WIT.to_owned()),
            (".gitignore", "target/\n".to_owned()),
            ("cases.toml", cases.clone()),
            (
                "README.md",
                readme(
                    "rustup target add wasm32-wasip2\ncargo build --release --target wasm32-wasip2",
                    &format!(
                        "target/wasm32-wasip2/release/{}.wasm",
                        name.replace('-', "_")
                    ),
                ),
            ),
        ]),
        "c" => Ok(vec![
            ("filter.c", fill(include_str!("../templates/c/filter.c"))),
            (
                "build.sh",
                include_str!("../templates/c/build.sh").to_owned(),
            ),
            (".gitignore", "out/\n".to_owned()),
            ("cases.toml", cases.clone()),
            (
                "README.md",
                readme(
                    "sudo apt-get install -y clang lld wasi-libc libclang-rt-dev-wasm32\n./build.sh",
                    "out/filter.wasm",
                ),
            ),
        ]),
        "python" => Ok(vec![
            (
                "filter.py",
                fill(include_str!("../templates/python/filter.py")),
            ),
            (
                "build.sh",
                include_str!("../templates/python/build.sh").to_owned(),
            ),
            (".gitignore", "out/\n__pycache__/\n".to_owned()),
            ("cases.toml", cases.clone()),
            (
                "README.md",
                readme(
                    "./build.sh   # python3 with venv; componentize-py from PyPI",
                    "out/filter.wasm",
                ),
            ),
        ]),
        "js" => Ok(vec![
            ("filter.js", fill(include_str!("../templates/js/filter.js"))),
            (
                "package.json",
                fill(include_str!("../templates/js/package.json")),
            ),
            (
                "build.sh",
                include_str!("../templates/js/build.sh").to_owned(),
            ),
            (".gitignore", "out/\nnode_modules/\n".to_owned()),
            ("cases.toml", cases.clone()),
            (
                "README.md",
                readme(
                    "./build.sh   # node and npm; componentize-js from npm",
                    "out/filter.wasm",
                ),
            ),
        ]),
        other => Err(format!("--lang {other:?}: one of rust, c, python, js")),
    }
}

/// `wasmgate filter new NAME --lang LANG [--dir DIR]`: a filter project
/// that builds as it is, against the contract this gateway serves.
pub fn new_filter(name: &str, lang: &str, dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-');
    if !valid {
        return Err(format!(
            "{name:?} is not a filter name: lower-case letters, digits and '-', starting with a letter"
        ));
    }
    let files = scaffold(lang, name)?;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!("{} exists and is not empty", dir.display()));
    }
    let mut written = Vec::new();
    for (rel, contents) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
        #[cfg(unix)]
        if rel.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        written.push(path);
    }
    Ok(written)
}
