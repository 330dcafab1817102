//! What `wasmgate filter test` prints, and the check of each case's
//! expectations against what happened.

use std::fmt::Write;

use super::spec::{Expect, Headers};
use super::{CallReport, CaseReport, Header, Message};

/// A series' name as the report shows it and expectations name it:
/// `name`, or `name{a="x",b="y"}` with the labels sorted.
pub fn metric_key(name: &str, labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn decision(call: Option<&CallReport>) -> &str {
    call.map_or("not-called", |c| c.decision)
}

/// Headers with these exact values (every value of a repeated one, in
/// order) in `got`; each mismatch named with `what`.
fn check_headers(what: &str, want: &Headers, got: &[(String, String)], out: &mut Vec<String>) {
    for (name, values) in want {
        let name = name.to_ascii_lowercase();
        let have: Vec<&str> = got
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        if have != values.list() {
            out.push(format!(
                "{what} header {name}: expected {:?}, got {}",
                values.list(),
                if have.is_empty() {
                    "none".to_owned()
                } else {
                    format!("{have:?}")
                }
            ));
        }
    }
}

fn check_absent(what: &str, names: &[String], got: &[(String, String)], out: &mut Vec<String>) {
    for name in names {
        let name = name.to_ascii_lowercase();
        if let Some((_, v)) = got.iter().find(|(n, _)| *n == name) {
            out.push(format!("{what} header {name}: expected none, got {v:?}"));
        }
    }
}

/// The expectations of a case that did not hold, each in words.
pub fn check(x: &Expect, r: &CaseReport) -> Vec<String> {
    let mut out = Vec::new();
    match (&x.init_error, &r.init_error) {
        (Some(want), Some(got)) if !got.contains(want.as_str()) => out.push(format!(
            "init_error: expected a refusal containing {want:?}, got {got:?}"
        )),
        (Some(want), None) => out.push(format!(
            "init_error: expected init to refuse the config ({want:?}), but it accepted it"
        )),
        (None, Some(got)) => {
            // Nothing else can be checked.
            out.push(format!("init refused the config: {got}"));
            return out;
        }
        _ => {}
    }
    if r.init_error.is_some() {
        return out;
    }
    for (key, want, call) in [
        ("on_request", &x.on_request, r.on_request.as_ref()),
        ("on_response", &x.on_response, r.on_response.as_ref()),
    ] {
        if let Some(want) = want
            && want != decision(call)
        {
            let why = call
                .and_then(|c| c.error.as_deref())
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            out.push(format!(
                "{key}: expected {want}, got {}{why}",
                decision(call)
            ));
        }
    }
    if let Some(want) = &x.error {
        let errors: Vec<&str> = [&r.on_request, &r.on_response]
            .into_iter()
            .filter_map(|c| c.as_ref()?.error.as_deref())
            .collect();
        if !errors.iter().any(|e| e.contains(want.as_str())) {
            out.push(format!(
                "error: expected a failure containing {want:?}, got {}",
                if errors.is_empty() {
                    "none".to_owned()
                } else {
                    format!("{errors:?}")
                }
            ));
        }
    } else {
        // A failure nobody expected is always a mismatch (said once: an
        // expected decision that is not `failed` says it already).
        for (phase, want, call) in [
            ("on-request", &x.on_request, &r.on_request),
            ("on-response", &x.on_response, &r.on_response),
        ] {
            if let Some(e) = call.as_ref().and_then(|c| c.error.as_deref())
                && want.is_none()
            {
                out.push(format!("{phase} failed: {e}"));
            }
        }
    }
    if let Some(client) = &r.client {
        if let Some(want) = x.status
            && client.status != Some(want)
        {
            out.push(format!(
                "status: expected {want}, got {}",
                client.status.unwrap_or_default()
            ));
        }
        check_headers("response", &x.headers, &client.headers, &mut out);
        check_absent("response", &x.absent_headers, &client.headers, &mut out);
        if let Some(want) = &x.body
            && *want != client.body
        {
            out.push(format!("body: expected {want:?}, got {:?}", client.body));
        }
        if let Some(want) = &x.body_contains
            && !client.body.contains(want.as_str())
        {
            out.push(format!(
                "body: expected it to contain {want:?}, got {:?}",
                client.body
            ));
        }
        if let Some(want) = &x.body_json {
            let want = serde_json::to_value(want).unwrap_or_default();
            match serde_json::from_str::<serde_json::Value>(&client.body) {
                Ok(got) if got == want => {}
                Ok(got) => out.push(format!("body_json: expected {want}, got {got}")),
                Err(e) => out.push(format!(
                    "body_json: the body is not JSON ({e}): {:?}",
                    client.body
                )),
            }
        }
    }
    let forwarded = r.forwarded.is_some();
    let want_forwarded = x.forwarded.or(x.upstream.as_ref().map(|_| true));
    if let Some(want) = want_forwarded
        && want != forwarded
    {
        out.push(if want {
            "forwarded: expected the request to reach the upstream, but it did not".to_owned()
        } else {
            "forwarded: expected the request not to reach the upstream, but it did".to_owned()
        });
    }
    if let (Some(u), Some(f)) = (&x.upstream, &r.forwarded) {
        check_upstream(u, f, &mut out);
    }
    for want in &x.logs {
        if !r.logs.iter().any(|l| l.message.contains(want.as_str())) {
            out.push(format!("logs: no line contains {want:?}"));
        }
    }
    for (key, want) in &x.metrics {
        let got = r
            .metrics
            .iter()
            .find(|(k, _)| k == key)
            .map_or(0.0, |(_, v)| *v);
        if (got - want).abs() > 1e-9 {
            let seen: Vec<&str> = r.metrics.iter().map(|(k, _)| k.as_str()).collect();
            out.push(format!(
                "metrics {key}: expected {want}, got {got} (recorded in this case: {seen:?})"
            ));
        }
    }
    if let Some(want) = x.outbound_calls
        && want != r.outbound.len()
    {
        out.push(format!(
            "outbound_calls: expected {want}, got {}",
            r.outbound.len()
        ));
    }
    out
}

fn check_upstream(u: &super::spec::ExpectUpstream, f: &Message, out: &mut Vec<String>) {
    for (key, want, got) in [
        ("method", &u.method, &f.method),
        ("path", &u.path, &f.path),
        ("cluster", &u.cluster, &f.cluster),
    ] {
        if let Some(want) = want
            && Some(want) != got.as_ref()
        {
            out.push(format!(
                "upstream {key}: expected {want:?}, got {}",
                got.as_deref()
                    .map_or("none (the route's)".to_owned(), |g| format!("{g:?}"))
            ));
        }
    }
    check_headers("upstream", &u.headers, &f.headers, out);
    check_absent("upstream", &u.absent_headers, &f.headers, out);
    if let Some(want) = &u.body
        && *want != f.body
    {
        out.push(format!(
            "upstream body: expected {want:?}, got {:?}",
            f.body
        ));
    }
}

fn call_line(out: &mut String, phase: &str, call: Option<&CallReport>) {
    match call {
        None => {
            let _ = writeln!(out, "    {phase:<12} not called");
        }
        Some(c) => {
            let _ = writeln!(
                out,
                "    {phase:<12} {} (cpu {:.1} µs, wall {:.1} µs)",
                c.decision, c.cpu_us, c.wall_us
            );
            for d in &c.detail {
                let _ = writeln!(out, "    {:<12}   {d}", "");
            }
            if let Some(e) = &c.error {
                let _ = writeln!(out, "    {:<12}   {e}", "");
            }
        }
    }
}

fn body_preview(body: &str) -> String {
    const MAX: usize = 200;
    if body.len() <= MAX {
        return format!("{body:?}");
    }
    let mut end = MAX;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &body[..end], body.len())
}

/// The report as text: each case with its decisions, what went upstream
/// and back, its logs, metrics and outbound calls, and any mismatch.
pub fn text(h: &Header, reports: &[CaseReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} (contract {}, sha256 {}, loaded in {:.0} ms)",
        h.file,
        h.filter,
        h.contract,
        &h.sha256[..16],
        h.load_ms
    );
    for (i, r) in reports.iter().enumerate() {
        let _ = writeln!(
            out,
            "{} case {}: {}",
            if r.passed { "ok  " } else { "FAIL" },
            i + 1,
            r.name
        );
        if let Some(e) = &r.init_error {
            let _ = writeln!(out, "    init         refused: {e}");
        } else {
            call_line(&mut out, "on-request", r.on_request.as_ref());
            match &r.forwarded {
                None => {
                    let _ = writeln!(out, "    upstream     not asked");
                }
                Some(f) => {
                    let _ = writeln!(
                        out,
                        "    upstream     {} {}{}",
                        f.method.as_deref().unwrap_or_default(),
                        f.path.as_deref().unwrap_or_default(),
                        f.cluster
                            .as_ref()
                            .map(|c| format!(" (cluster {c})"))
                            .unwrap_or_default()
                    );
                }
            }
            call_line(&mut out, "on-response", r.on_response.as_ref());
            if let Some(c) = &r.client {
                let _ = writeln!(
                    out,
                    "    client       {} {}",
                    c.status.unwrap_or_default(),
                    body_preview(&c.body)
                );
                for (n, v) in &c.headers {
                    let _ = writeln!(out, "    {:<12}   {n}: {v}", "");
                }
            }
        }
        for l in &r.logs {
            let _ = writeln!(out, "    log          {}: {}", l.level, l.message);
        }
        for (k, v) in &r.metrics {
            let _ = writeln!(out, "    metric       {k} {v}");
        }
        for c in &r.outbound {
            let _ = writeln!(
                out,
                "    outbound     {} {} on {} -> {}",
                c.method, c.path, c.cluster, c.answer
            );
        }
        for m in &r.mismatches {
            let _ = writeln!(out, "    MISMATCH     {m}");
        }
    }
    let failed = reports.iter().filter(|r| !r.passed).count();
    let _ = writeln!(
        out,
        "{} case{}: {} passed, {failed} failed",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" },
        reports.len() - failed
    );
    out
}

/// The report as JSON.
pub fn json(h: &Header, reports: &[CaseReport]) -> serde_json::Value {
    let failed = reports.iter().filter(|r| !r.passed).count();
    serde_json::json!({
        "file": h.file,
        "filter": h.filter,
        "contract": h.contract,
        "sha256": h.sha256,
        "load_ms": h.load_ms,
        "passed": reports.len() - failed,
        "failed": failed,
        "cases": reports,
    })
}
