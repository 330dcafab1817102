//! Test-only filter: misbehaves when the request header `x-fault` asks it to, so
//! the end-to-end tests can check that the host contains each failure to the one
//! request. Not a first-party filter.
//!
//! `x-fault` values: `trap` (panic), `loop` (spin forever), `alloc` (allocate
//! without bound), `recurse` (overflow the stack), `sandbox` (try the file system,
//! the environment and the network, print to stdout/stderr, and answer 200 with
//! what happened), `sleep` (hold the instance for 2 s), `grow` (keep 8 MiB
//! alive in the instance), `reroute` (send the request to the cluster named
//! in `x-fault-arg`, at `/rerouted`), `cache-set` and `cache-get` (the
//! `cache` import, see the match below), `log-flood` (write `x-fault-arg`
//! log lines that try to forge gateway lines), `read-header` (answer with
//! the values of the header named in `x-fault-arg`), `set-header` (set the
//! header named in `x-fault-arg` to `forged`), `bucket-flood` (take from as
//! many rate-limit keys as `x-fault-arg` says), `oversize` (hand back a
//! 100 KiB `context`, or 100 KiB of headers with `x-fault-arg: headers`). `kv-incr`, `kv-put`, `kv-get`, `kv-get-key` and `var` exercise
//! the host's `kv` and `config` services (see the match below).
//! In the config, `fail_init` makes `init` reject it, and `sleep_init_ms`
//! blocks `init` in a WASI sleep (only after the first `sleep_init_after`
//! `init`s of the filter).
//! With `bodies = true` in its config it asks for both bodies: requests are
//! upper-cased (and `x-request-body-len` set), responses get ` [seen by TAG]`.
//! Anything else: proceed and mark the request with `x-fault-seen: <tag>`,
//! `x-instance: <random id of this instance>` and `x-instance-calls: <n>`.

use std::cell::{Cell, RefCell};
use std::hash::{BuildHasher, Hasher};

use serde::Deserialize;
use wasmgate_sdk::outbound::Call;
use wasmgate_sdk::{
    Filter, FilterInfo, OnRequest, OnResponse, Request, RequestEdits, Response, ResponseEdits,
    cache, config, export_filter, kv, log, metrics, outbound, parse_config, rate_limit,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    fail_init: bool,
    /// Block in `init` for this many milliseconds (a WASI sleep: a host
    /// call, where the CPU deadline cannot reach), after logging
    /// "fault filter: sleeping in init (TAG)".
    #[serde(default)]
    sleep_init_ms: u64,
    /// With `sleep_init_ms`: only `init`s after the first this many of this
    /// filter (counted in `kv` key `inits`) sleep, so the build's probe
    /// passes and instances made for requests block.
    #[serde(default)]
    sleep_init_after: i64,
    /// Ask for both bodies: requests are upper-cased (header
    /// `x-request-body-len` gives the length seen) and responses get
    /// ` [seen by TAG]` appended.
    #[serde(default)]
    bodies: bool,
}

struct Fault {
    bodies: bool,
    tag: String,
    /// Random per instance, so tests can tell instances apart.
    instance: u64,
    /// Calls this instance has served.
    calls: Cell<u64>,
    /// Memory kept alive on purpose (`x-fault: grow`).
    hoard: RefCell<Vec<Vec<u8>>>,
}

#[inline(never)]
#[expect(unconditional_recursion, reason = "overflowing the stack is the point")]
fn recurse(depth: u64, sink: &mut [u64; 64]) -> u64 {
    sink[(depth % 64) as usize] = depth;
    let mut local = [depth; 64];
    local[0] = recurse(depth + 1, &mut local);
    std::hint::black_box(local[0] + sink[0])
}

fn sandbox_report() -> String {
    println!("fault filter: hello on stdout");
    eprintln!("fault filter: hello on stderr");
    let file = std::fs::read("/etc/passwd").is_ok();
    let dir = std::fs::read_dir("/").is_ok() || std::fs::read_dir(".").is_ok();
    let write = std::fs::write("escape.txt", b"x").is_ok();
    let env = std::env::vars().count();
    let args = std::env::args().count();
    let tcp = std::net::TcpStream::connect("127.0.0.1:80").is_ok();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").is_ok();
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() > 1_600_000_000)
        .unwrap_or(false);
    let mut random = std::collections::hash_map::RandomState::new();
    let _ = &mut random;
    format!(
        r#"{{"file_read":{file},"dir_read":{dir},"file_write":{write},"env_vars":{env},"args":{args},"tcp_connect":{tcp},"udp_bind":{udp},"clock_ok":{clock}}}"#
    )
}

impl Fault {
    fn proceed(&self) -> OnRequest {
        OnRequest::proceed_with(
            RequestEdits::default()
                .set_header("x-fault-seen", &self.tag)
                .set_header("x-instance", format!("{:016x}", self.instance))
                .set_header("x-instance-calls", self.calls.get().to_string()),
        )
    }
}

impl Filter for Fault {
    fn new(config: &str) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        if config.fail_init {
            return Err("fault filter: init failure requested by config".into());
        }
        let inits = kv::increment("inits", 1, None).unwrap_or(0);
        if config.sleep_init_ms > 0 && inits > config.sleep_init_after {
            log::info(&format!(
                "fault filter: sleeping in init ({})",
                config.tag.as_deref().unwrap_or("fault")
            ));
            std::thread::sleep(std::time::Duration::from_millis(config.sleep_init_ms));
        }
        let instance = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Ok(Fault {
            bodies: config.bodies,
            tag: config.tag.unwrap_or_else(|| "fault".into()),
            instance,
            calls: Cell::new(0),
            hoard: RefCell::new(Vec::new()),
        })
    }

    fn info(&self) -> FilterInfo {
        let info = FilterInfo::new().request_headers(["x-fault", "x-fault-arg"]);
        if self.bodies {
            info.buffer_request_body(true)
                .buffer_response_body(true)
                .wants_response(true)
        } else {
            info
        }
    }

    fn on_response(&self, _req: &Request, resp: &Response, _context: Option<&[u8]>) -> OnResponse {
        match resp.body() {
            Some(body) if self.bodies => {
                let mut b = body.to_vec();
                b.extend_from_slice(format!(" [seen by {}]", self.tag).as_bytes());
                OnResponse::proceed_with(ResponseEdits::default().body(b))
            }
            _ => OnResponse::proceed(),
        }
    }

    fn on_request(&self, req: &Request) -> OnRequest {
        self.calls.set(self.calls.get() + 1);
        match req.header("x-fault") {
            Some("trap") => panic!("fault filter: trap requested"),
            Some("loop") => loop {
                std::hint::black_box(0u64);
            },
            Some("alloc") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut chunk = vec![0u8; 1 << 20];
                    chunk[0] = 1;
                    hoard.push(std::hint::black_box(chunk));
                }
            }
            Some("recurse") => {
                let mut sink = [0u64; 64];
                let n = recurse(0, &mut sink);
                OnRequest::respond(Response::new(200).text(format!("{n}")))
            }
            Some("sandbox") => OnRequest::respond(Response::new(200).json(sandbox_report())),
            Some("sleep") => {
                // Holds this instance (and its pool slot) while the host waits.
                std::thread::sleep(std::time::Duration::from_secs(2));
                OnRequest::proceed()
            }
            Some("grow") => {
                // Keeps 8 MiB alive in this instance.
                self.hoard
                    .borrow_mut()
                    .push(std::hint::black_box(vec![1u8; 8 << 20]));
                self.proceed()
            }
            // Host state: `kv-incr` adds one to `hits` and reports it in
            // `x-hits`; `kv-put` stores `secret`; `kv-get` reports it (or
            // `none`) in `x-secret`; `var` reports config value `greeting`.
            Some("kv-incr") => match kv::increment("hits", 1, None) {
                Ok(n) => OnRequest::proceed_with(
                    RequestEdits::default().set_header("x-hits", n.to_string()),
                ),
                Err(e) => OnRequest::respond(Response::new(500).text(format!("{e:?}"))),
            },
            Some("kv-put") => match kv::set("secret", self.tag.as_bytes(), None) {
                Ok(_) => self.proceed(),
                Err(e) => OnRequest::respond(Response::new(500).text(format!("{e:?}"))),
            },
            Some("kv-get") => {
                let v = kv::get("secret").map_or("none".to_owned(), |e| {
                    String::from_utf8_lossy(&e.value).into_owned()
                });
                OnRequest::proceed_with(RequestEdits::default().set_header("x-secret", v))
            }
            // `kv-get-key`: the value of the key in `x-fault-arg` (any key
            // a filter may form), or `none`, in `x-secret`.
            Some("kv-get-key") => {
                let key = req.header("x-fault-arg").unwrap_or_default();
                let v = kv::get(key).map_or("none".to_owned(), |e| {
                    String::from_utf8_lossy(&e.value).into_owned()
                });
                OnRequest::proceed_with(RequestEdits::default().set_header("x-secret", v))
            }
            // The `cache` import: `cache-set` stores `KEY=VALUE@TTL_MS#TAG,…`
            // (from `x-fault-arg`), answering 200 `stored` or 507 with the
            // error; `cache-get` answers 200 with the value of KEY, or 404.
            Some("cache-set") => {
                let arg = req.header("x-fault-arg").unwrap_or_default();
                let (entry, tags) = arg.split_once('#').unwrap_or((arg, ""));
                let (kv, ttl) = entry.split_once('@').unwrap_or((entry, "60000"));
                let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
                let tags: Vec<&str> = tags.split(',').filter(|t| !t.is_empty()).collect();
                match cache::set(key, value.as_bytes(), ttl.parse().unwrap_or(0), &tags) {
                    Ok(()) => OnRequest::respond(Response::new(200).text("stored")),
                    Err(e) => OnRequest::respond(Response::new(507).text(format!("{e:?}"))),
                }
            }
            Some("cache-get") => {
                let key = req.header("x-fault-arg").unwrap_or_default();
                match cache::get(key) {
                    Some(v) => {
                        OnRequest::respond(Response::new(200).text(String::from_utf8_lossy(&v)))
                    }
                    None => OnRequest::respond(Response::new(404).text("none")),
                }
            }
            Some("var") => {
                let v = config::get("greeting").unwrap_or_else(|| "none".into());
                OnRequest::proceed_with(RequestEdits::default().set_header("x-greeting", v))
            }
            Some("log") => {
                log::warn("fault filter: a warning through the log import");
                OnRequest::proceed()
            }
            // The attacker's buckets: takes from x-fault-arg distinct keys,
            // answering with how many were allowed.
            Some("bucket-flood") => {
                let n: u32 = req
                    .header("x-fault-arg")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(100);
                let allowed = (0..n)
                    .filter(|i| rate_limit::take(&format!("flood-{i}"), 10, 1, 1).allowed)
                    .count();
                OnRequest::respond(Response::new(200).text(allowed.to_string()))
            }
            // Hands back more than the host keeps: a 100 KiB context, or
            // 100 KiB of header values (x-fault-arg: context or headers).
            Some("oversize") => {
                let big = "a".repeat(1024);
                let edits = match req.header("x-fault-arg") {
                    Some("headers") => (0..100).fold(RequestEdits::default(), |e, i| {
                        e.set_header(format!("x-big-{i}"), big.clone())
                    }),
                    _ => RequestEdits::default().context(vec![0u8; 100 << 10]),
                };
                OnRequest::proceed_with(edits)
            }
            // Reads any header (named in x-fault-arg) and answers with it.
            Some("read-header") => {
                let name = req.header("x-fault-arg").unwrap_or("authorization");
                let values = req.fetch_header(name);
                OnRequest::respond(Response::new(200).text(format!("{values:?}")))
            }
            // Sets the header named in x-fault-arg to "forged" and goes on.
            Some("set-header") => {
                let name = req.header("x-fault-arg").unwrap_or("x-user");
                OnRequest::proceed_with(RequestEdits::default().set_header(name, "forged"))
            }
            // The attacker's log: as many lines as x-fault-arg says, each
            // trying to forge a gateway line after a newline, through the
            // import and stdout.
            Some("log-flood") => {
                let n: u32 = req
                    .header("x-fault-arg")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(100);
                for i in 0..n {
                    log::warn(&format!(
                        "flood {i}\nFORGED-import INFO wasmgate: all is well"
                    ));
                }
                println!("flood stdout\rFORGED-stdout INFO wasmgate: all is well");
                OnRequest::proceed()
            }
            // Calls cluster `c` at the path in x-fault-arg until refused.
            Some("outbound-loop") => {
                let path = req.header("x-fault-arg").unwrap_or("/");
                let mut ok = 0;
                let error = loop {
                    match outbound::send(Call::get("c", path)) {
                        Ok(_) => ok += 1,
                        Err(e) => break e,
                    }
                };
                OnRequest::respond(Response::new(200).text(format!("ok={ok} error={error:?}")))
            }
            // Waits on a slow call (x-fault-arg: its path), then spins: the
            // wait must not turn into CPU budget.
            Some("outbound-then-spin") => {
                let _ = outbound::send(Call::get("c", req.header("x-fault-arg").unwrap_or("/")));
                #[expect(clippy::empty_loop, reason = "spinning is the point")]
                loop {}
            }
            // One call to the cluster named in x-fault-arg, path /outbound.
            // The attacker's reroute: send this route's request to the
            // cluster named in x-fault-arg, to a path of its choosing.
            Some("reroute") => {
                let cluster = req.header("x-fault-arg").unwrap_or("c");
                OnRequest::proceed_with(
                    RequestEdits::default()
                        .cluster(cluster)
                        .path_with_query("/rerouted")
                        .set_header("x-from", "fault"),
                )
            }
            Some("outbound-to") => {
                let cluster = req.header("x-fault-arg").unwrap_or("c");
                let text =
                    match outbound::send(Call::get(cluster, "/outbound").header("x-from", "fault"))
                    {
                        Ok(r) => format!(
                            "status={} body={}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        ),
                        Err(e) => format!("error={e:?}"),
                    };
                OnRequest::respond(Response::new(200).text(text))
            }
            // Sends the comma-separated paths in x-fault-arg to `c` at once.
            Some("outbound-all") => {
                let calls = req
                    .header("x-fault-arg")
                    .unwrap_or("/")
                    .split(',')
                    .map(|p| Call::get("c", p).timeout_ms(500))
                    .collect();
                let lines: Vec<String> = outbound::send_all(calls)
                    .into_iter()
                    .map(|r| match r {
                        Ok(r) => r.status.to_string(),
                        Err(e) => format!("{e:?}"),
                    })
                    .collect();
                OnRequest::respond(Response::new(200).text(lines.join(",")))
            }
            // Records metrics; x-fault-arg: how many distinct label values.
            Some("metrics") => {
                let n: u32 = req
                    .header("x-fault-arg")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                for i in 0..n {
                    metrics::counter_add("hits", &[("kind", &i.to_string())], 1);
                }
                metrics::gauge_set("depth", &[], 2.5);
                metrics::histogram_observe("work_seconds", &[], 0.02);
                metrics::counter_add("bad-name", &[], 1);
                OnRequest::proceed()
            }
            _ if self.bodies => match req.body() {
                Some(body) => OnRequest::proceed_with(
                    RequestEdits::default()
                        .set_header("x-request-body-len", body.len().to_string())
                        .body(body.to_ascii_uppercase()),
                ),
                None => self.proceed(),
            },
            _ => self.proceed(),
        }
    }
}

export_filter!(Fault);
