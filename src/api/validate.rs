//! Validation shared by server admission and `k8s4r validate`. It collects
//! *every* problem, each with the exact field path and the reason, e.g.
//! `spec.taskGroups[0].network.upstreams[1].localPort: 70000 is not a valid port (1-65535)`.
//!
//! Besides errors it finds warnings: what the original implementation
//! accepted and this one accepts too, but does not act on (a service
//! check whose `portLabel` names no port is not run) or acts on without
//! the safety it would need (an artifact over plain http without a
//! checksum: integrity not verified). They name their
//! field the same way; the server returns them as `Warning` headers and
//! records them as events on the Job, `k8s4r validate` and `run -f` print
//! them.

use super::findings::{FieldError, Findings};
use super::types::*;
use super::units::{check_max_duration, Duration, Quantity};
use super::update_strategy::{CountOrPercent, UpdateStrategy};
use std::collections::{BTreeMap, HashSet};

/// Accumulates errors and warnings while walking an object.
#[derive(Default)]
struct Errors(Findings);

impl Errors {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.errors.push(FieldError::new(field, message));
    }
    fn warn(&mut self, field: &str, message: impl Into<String>) {
        self.0.warnings.push(FieldError::new(field, message));
    }
    /// Every duration of the API: it parses, and it is at most
    /// [`MAX_DURATION`](super::units::MAX_DURATION) (an agent adds it to
    /// its clock).
    fn duration(&mut self, field: &str, d: &Option<Duration>) {
        let Some(d) = d else { return };
        match d.get() {
            None => self.add(field, d.error().unwrap_or("invalid duration").to_string()),
            Some(v) => {
                if let Err(e) = check_max_duration(v, d.text()) {
                    self.add(field, e);
                }
            }
        }
    }
    fn quantity(&mut self, field: &str, q: &Option<Quantity>) {
        if let Some(e) = q.as_ref().and_then(Quantity::error) {
            self.add(field, e.to_string());
        }
    }
}

pub const MAX_COUNT: i32 = 10_000;
pub const SUPPORTED_DRIVERS: &[&str] = &["exec", "raw_exec"];

// ---------------------------------------------------------------- names

/// RFC 1123 label: lowercase alphanumerics and '-', starting and ending with
/// an alphanumeric, at most 63 characters. Used for group, task and upstream
/// names, which become parts of object names, directories and env vars.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("{name:?} is longer than 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(format!(
            "{name:?} is not a valid DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters. Used for
/// object names (metadata.name).
pub fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    if name.split('.').any(|l| check_dns_label(l).is_err()) {
        return Err(format!(
            "{name:?} is not a valid DNS-1123 subdomain (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        check_dns_subdomain(p).map_err(|e| format!("prefix of {key:?}: {e}"))?;
    }
    check_label_value(name).and_then(|_| {
        if name.is_empty() {
            Err(format!("{key:?}: name part must not be empty"))
        } else {
            Ok(())
        }
    })
}

fn check_label_value(value: &str) -> Result<(), String> {
    let ok = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && value.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && value.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid label value (at most 63 of A-Z a-z 0-9 - _ ., starting and ending alphanumeric)"
        ))
    }
}

fn check_labels(errs: &mut Errors, path: &str, labels: &StringMap) {
    for (k, v) in labels {
        if let Err(e) = check_label_key(k) {
            errs.add(&format!("{path}[{k}]"), e);
        }
        if let Err(e) = check_label_value(v) {
            errs.add(&format!("{path}[{k}]"), e);
        }
    }
}

fn check_env_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid environment variable name (letters, digits, '_', '.', '-', not starting with a digit)"))
    }
}

// ---------------------------------------------------------------- paths

/// Roots an absolute-looking manifest path may start with: they are expanded
/// by the agent to the task's own directory or its group's shared directory.
pub const ALLOWED_PATH_ROOTS: &[&str] = &[
    "${K8S4R_TASK_DIR}",
    "$K8S4R_TASK_DIR",
    "${K8S4R_ALLOC_DIR}",
    "$K8S4R_ALLOC_DIR",
];

/// Nomad's absolute task paths, as manifests of the original implementation
/// write them (Nomad's exec driver chroots into the task directory, so
/// `/local/x` is the task's `local/x`): `/local/...` and `/secrets/...` are
/// the task directory's `local/` and `secrets/`, `/alloc/...` the group's
/// shared directory (K8S4R_ALLOC_DIR). Any other absolute path is refused.
pub const NOMAD_PATH_ROOTS: &[&str] = &["/local", "/secrets", "/alloc"];

/// `path` below one of [`NOMAD_PATH_ROOTS`] (whole components: `/localx`
/// is not): (root, the rest after it).
pub fn nomad_root(path: &str) -> Option<(&'static str, &str)> {
    NOMAD_PATH_ROOTS.iter().find_map(|root| {
        let rest = path.strip_prefix(root)?;
        (rest.is_empty() || rest.starts_with('/')).then_some((*root, rest))
    })
}

/// A path written in a manifest that must stay inside the task directory:
/// relative, or below one of [`ALLOWED_PATH_ROOTS`] or [`NOMAD_PATH_ROOTS`],
/// and never through `..`.
pub fn check_task_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.contains('\0') {
        return Err("must not contain NUL bytes".into());
    }
    let rest = ALLOWED_PATH_ROOTS
        .iter()
        .find_map(|root| path.strip_prefix(root))
        .or_else(|| nomad_root(path).map(|(_, rest)| rest))
        .unwrap_or(path);
    if rest.len() == path.len() && path.starts_with('/') {
        return Err(format!("{path:?} is absolute: paths are relative to the task directory (or start with ${{K8S4R_TASK_DIR}} / ${{K8S4R_ALLOC_DIR}}, or Nomad's /local, /secrets, /alloc)"));
    }
    if rest.split('/').any(|c| c == "..") {
        return Err(format!("{path:?} escapes the task directory ('..' is not allowed)"));
    }
    Ok(())
}

fn check_absolute_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be an absolute path"));
    }
    if path.split('/').any(|c| c == "..") || path.contains('\0') {
        return Err(format!("{path:?} must not contain '..' or NUL"));
    }
    Ok(())
}

// ---------------------------------------------------------------- network

/// `host:port` with a DNS name, IPv4 address or `[IPv6]` host.
pub fn check_host_port(s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not host:port (e.g. db.example.com:5432)");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
        if h.is_empty() || h.contains(':') {
            return Err(bad());
        }
        let host_ok = h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !host_ok {
            return Err(format!("{s:?}: {h:?} is not a valid host name or IP address"));
        }
        (h, p)
    };
    let _ = host;
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(()),
        _ => Err(format!("{s:?}: port {port:?} is not a valid port (1-65535)")),
    }
}

/// A SPIFFE trust domain: lowercase letters, digits, '.', '-', '_'; no scheme.
pub fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("must not be empty".into());
    }
    if td.starts_with("spiffe://") {
        return Err(format!(
            "{td:?} must be a bare trust domain such as example.org (no spiffe:// prefix)"
        ));
    }
    if td.len() > 255
        || !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{td:?} is not a valid trust domain (lowercase letters, digits, '.', '-', '_')"
        ));
    }
    Ok(())
}

/// `spiffe://<trust domain>/<path>`, optionally required to be in `td`.
pub fn check_spiffe_id(id: &str, td: Option<&str>) -> Result<(), String> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("{id:?} must start with spiffe://"))?;
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    check_trust_domain(domain).map_err(|e| format!("{id:?}: {e}"))?;
    if let Some(td) = td {
        if domain != td {
            return Err(format!("{id:?} is not in trust domain {td:?}"));
        }
    }
    let path_ok = path.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    });
    if !path.is_empty() && !path_ok {
        return Err(format!(
            "{id:?} has an invalid path (segments of letters, digits, '-', '.', '_')"
        ));
    }
    Ok(())
}

fn check_spiffe(errs: &mut Errors, path: &str, s: &SpiffeConfig) {
    if let Err(e) = check_trust_domain(&s.trust_domain) {
        errs.add(&format!("{path}.trustDomain"), e);
    }
    if let Some(sock) = &s.agent_socket_path {
        if let Err(e) = check_absolute_path(sock) {
            errs.add(&format!("{path}.agentSocketPath"), e);
        }
    }
}

/// Validate one `network` block. `ports` collects local ports already used in
/// the same group so duplicates across group- and task-level blocks are found.
fn check_network(
    errs: &mut Errors,
    path: &str,
    net: &NetworkConfig,
    ports: &mut BTreeMap<i64, String>,
    names: &mut HashSet<String>,
) {
    if let Some(t) = &net.proxy_type {
        if t != "envoy" && t != "none" {
            errs.add(
                &format!("{path}.type"),
                format!("{t:?} is not supported (envoy or none)"),
            );
        }
    }
    if let Some(s) = &net.spiffe {
        check_spiffe(errs, &format!("{path}.spiffe"), s);
    }
    if let Some(files) = &net.tls_files {
        for (field, p) in [
            ("certPath", &files.cert_path),
            ("keyPath", &files.key_path),
            ("caPath", &files.ca_path),
        ] {
            if let Err(e) = check_absolute_path(p) {
                errs.add(&format!("{path}.tlsFiles.{field}"), e);
            }
        }
    }
    if net.is_active() && net.upstreams.is_empty() && net.inbound.is_empty() {
        errs.add(
            &format!("{path}.upstreams"),
            "at least one upstream is required when the proxy is enabled",
        );
    }
    for (i, up) in net.upstreams.iter().enumerate() {
        let p = format!("{path}.upstreams[{i}]");
        match check_dns_label(&up.name) {
            Err(e) => errs.add(&format!("{p}.name"), e),
            Ok(()) => {
                if !names.insert(up.name.clone()) {
                    errs.add(
                        &format!("{p}.name"),
                        format!("duplicate upstream name {:?} in this task group", up.name),
                    );
                }
            }
        }
        if !(1..=65535).contains(&up.local_port) {
            errs.add(
                &format!("{p}.localPort"),
                format!("{} is not a valid port (1-65535)", up.local_port),
            );
        } else if let Some(other) = ports.insert(up.local_port, up.name.clone()) {
            errs.add(
                &format!("{p}.localPort"),
                format!(
                    "port {} is already used by upstream {other:?} in this task group",
                    up.local_port
                ),
            );
        }
        if let Err(e) = check_host_port(&up.upstream) {
            errs.add(&format!("{p}.upstream"), e);
        }
        if let Some(s) = &up.spiffe {
            check_spiffe(errs, &format!("{p}.spiffe"), s);
        }
        errs.duration(&format!("{p}.idleTimeout"), &up.idle_timeout);
        if up.idle_timeout.is_some() && up.protocol() != crate::api::Protocol::Tcp {
            errs.add(
                &format!("{p}.idleTimeout"),
                "only for protocol tcp (http and grpc pool their connections)",
            );
        }
        if up.tls() && net.is_active() {
            let spiffe = up.spiffe.as_ref().or(net.spiffe.as_ref());
            if spiffe.is_none() && net.tls_files.is_none() {
                errs.add(&format!("{p}.tls"), "tls is on (the default) but the network has no spiffe block or tlsFiles to get certificates from; add one or set tls: false");
            }
            if let Some(id) = &up.spiffe_id {
                if let Err(e) = check_spiffe_id(id, spiffe.map(|s| s.trust_domain.as_str())) {
                    errs.add(&format!("{p}.spiffeID"), e);
                }
            }
        } else if up.spiffe_id.is_some() {
            errs.add(&format!("{p}.spiffeID"), "only meaningful with tls: true");
        }
    }
    check_inbound(errs, path, net, ports, names);
}

/// Inbound listeners share the group's port and name space with upstreams.
fn check_inbound(
    errs: &mut Errors,
    path: &str,
    net: &NetworkConfig,
    ports: &mut BTreeMap<i64, String>,
    names: &mut HashSet<String>,
) {
    for (i, ib) in net.inbound.iter().enumerate() {
        let p = format!("{path}.inbound[{i}]");
        match check_dns_label(&ib.name) {
            Err(e) => errs.add(&format!("{p}.name"), e),
            Ok(()) => {
                if !names.insert(ib.name.clone()) {
                    errs.add(
                        &format!("{p}.name"),
                        format!("duplicate name {:?} in this task group's network", ib.name),
                    );
                }
            }
        }
        if !(1..=65535).contains(&ib.port) {
            errs.add(
                &format!("{p}.port"),
                format!("{} is not a valid port (1-65535)", ib.port),
            );
        } else if let Some(other) = ports.insert(ib.port, ib.name.clone()) {
            errs.add(
                &format!("{p}.port"),
                format!("port {} is already used by {other:?} in this task group", ib.port),
            );
        }
        if !(1..=65535).contains(&ib.target_port) {
            errs.add(
                &format!("{p}.targetPort"),
                format!("{} is not a valid port (1-65535)", ib.target_port),
            );
        }
        if ib.address().parse::<std::net::IpAddr>().is_err() {
            errs.add(
                &format!("{p}.address"),
                format!("{:?} is not an IP address (e.g. 0.0.0.0)", ib.address()),
            );
        }
        if let Some(s) = &ib.spiffe {
            check_spiffe(errs, &format!("{p}.spiffe"), s);
        }
        let spiffe = ib.spiffe.as_ref().or(net.spiffe.as_ref());
        if spiffe.is_none() && net.tls_files.is_none() {
            errs.add(
                &p,
                "inbound mTLS needs certificates: add a spiffe block or tlsFiles to the network",
            );
        }
        if ib.allowed_spiffe_ids.is_empty() {
            errs.add(
                &format!("{p}.allowedSpiffeIDs"),
                "list at least one SPIFFE ID; nothing is allowed by default",
            );
        }
        let td = spiffe.map(|s| s.trust_domain.as_str());
        for (j, id) in ib.allowed_spiffe_ids.iter().enumerate() {
            if let Err(e) = check_spiffe_id(id, td) {
                errs.add(&format!("{p}.allowedSpiffeIDs[{j}]"), e);
            }
        }
    }
}

// ---------------------------------------------------------------- tasks

fn check_restart_policy(errs: &mut Errors, path: &str, rp: &RestartPolicy) {
    if let Some(a) = rp.attempts {
        if a < 0 {
            errs.add(&format!("{path}.attempts"), format!("{a} must be 0 or more"));
        }
    }
    errs.duration(&format!("{path}.interval"), &rp.interval);
    errs.duration(&format!("{path}.delay"), &rp.delay);
}

fn check_reschedule_policy(errs: &mut Errors, path: &str, rp: &ReschedulePolicy) {
    if let Some(a) = rp.attempts {
        if a < 0 {
            errs.add(&format!("{path}.attempts"), format!("{a} must be 0 or more"));
        }
    }
    errs.duration(&format!("{path}.interval"), &rp.interval);
    errs.duration(&format!("{path}.delay"), &rp.delay);
    errs.duration(&format!("{path}.maxDelay"), &rp.max_delay);
    if let Some(f) = &rp.delay_function {
        if !["constant", "exponential", "fibonacci"].contains(&f.as_str()) {
            errs.add(
                &format!("{path}.delayFunction"),
                format!("{f:?} is not one of constant, exponential, fibonacci"),
            );
        }
    }
}

/// A user name or uid as /etc/passwd holds them (no shell metacharacters).
pub fn check_user(u: &str) -> Result<(), String> {
    let ok = !u.is_empty() && u.len() <= 32 && u.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{u:?} is not a valid user name or uid"))
    }
}

fn check_resources(errs: &mut Errors, path: &str, r: &Resources) {
    errs.quantity(&format!("{path}.cpu"), &r.cpu);
    errs.quantity(&format!("{path}.memory"), &r.memory);
    errs.quantity(&format!("{path}.disk"), &r.disk);
    if let Some(n) = r.pids.filter(|n| !(1..=Resources::MAX_PIDS).contains(n)) {
        errs.add(
            &format!("{path}.pids"),
            format!("{n} is out of range (1-{})", Resources::MAX_PIDS),
        );
    }
}

const SIGNALS: &[&str] = &[
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGKILL", "SIGCONT", "SIGSTOP", "SIGALRM",
    "SIGWINCH",
];

/// Is the checksum option `sha256:<64 lowercase or uppercase hex>`?
pub fn check_checksum(value: &str) -> Result<(), String> {
    match value.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        Some(("sha256", hex)) => Err(format!(
            "sha256 checksum must be 64 hex digits, got {} characters",
            hex.len()
        )),
        _ => Err(format!(
            "{value:?} is not a supported checksum (expected sha256:<64 hex digits>)"
        )),
    }
}

/// Where a task sits in its Job: decides which fields are allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TaskRole {
    Init,
    Main,
    /// The spec of a stored Task object (placement fields allowed).
    Object,
}

fn check_task(errs: &mut Errors, path: &str, t: &TaskSpec, role: TaskRole) {
    if let Err(e) = check_dns_label(&t.name) {
        errs.add(&format!("{path}.name"), e);
    }
    if !SUPPORTED_DRIVERS.contains(&t.driver.as_str()) {
        let msg = if t.driver.is_empty() {
            "is required (exec or raw_exec)".to_string()
        } else if t.driver == "docker" || t.driver == "java" {
            format!(
                "{:?} is not supported by this agent (supported: exec, raw_exec)",
                t.driver
            )
        } else {
            format!("unknown driver {:?} (supported: exec, raw_exec)", t.driver)
        };
        errs.add(&format!("{path}.driver"), msg);
    } else {
        match &t.config.exec_config {
            None => errs.add(
                &format!("{path}.config.execConfig"),
                format!("is required for driver {:?}", t.driver),
            ),
            Some(ec) if ec.command.trim().is_empty() => {
                errs.add(&format!("{path}.config.execConfig.command"), "must not be empty")
            }
            Some(ec) if ec.command.contains('\0') || ec.args.iter().any(|a| a.contains('\0')) => errs.add(
                &format!("{path}.config.execConfig"),
                "command and args must not contain NUL bytes",
            ),
            Some(_) => {}
        }
    }
    for (k, v) in &t.env {
        if let Err(e) = check_env_name(k) {
            errs.add(&format!("{path}.env[{k}]"), e);
        }
        if v.contains('\0') {
            errs.add(&format!("{path}.env[{k}]"), "value must not contain NUL bytes");
        }
    }
    if let Some(Err(e)) = t.user.as_deref().map(check_user) {
        errs.add(&format!("{path}.user"), e);
    }
    errs.duration(&format!("{path}.timeout"), &t.timeout);
    errs.duration(&format!("{path}.killTimeout"), &t.kill_timeout);
    if let Some(rp) = &t.restart_policy {
        check_restart_policy(errs, &format!("{path}.restartPolicy"), rp);
    }
    for (i, a) in t.artifacts.iter().enumerate() {
        let p = format!("{path}.artifacts[{i}]");
        let src = a.getter_source.as_str();
        if src.is_empty() {
            errs.add(&format!("{p}.getterSource"), "must not be empty");
        } else if !(src.starts_with("http://") || src.starts_with("https://") || src.starts_with("file://")) {
            errs.add(
                &format!("{p}.getterSource"),
                format!("{src:?}: only http://, https:// and file:// sources are supported"),
            );
        }
        if let Some(dest) = &a.relative_dest {
            if let Err(e) = check_task_relative_path(dest) {
                errs.add(&format!("{p}.relativeDest"), e);
            }
        }
        if let Some(mode) = &a.getter_mode {
            if !["any", "file", "dir"].contains(&mode.as_str()) {
                errs.add(
                    &format!("{p}.getterMode"),
                    format!("{mode:?} is not one of any, file, dir"),
                );
            }
        }
        // Plain http can be altered on the way, and the agent has no TLS:
        // accepted (the original implementation fetched it too), but said,
        // as a robot with `--require-artifact-checksums` refuses it.
        if src.starts_with("http://") && !a.getter_options.contains_key("checksum") {
            errs.warn(
                &format!("{p}.getterSource"),
                format!(
                    "{src:?} is fetched over plain http without getterOptions.checksum (sha256:<hex>): integrity not verified; robots with --require-artifact-checksums refuse it"
                ),
            );
        }
        for (k, v) in &a.getter_options {
            match k.as_str() {
                "checksum" => {
                    if let Err(e) = check_checksum(v) {
                        errs.add(&format!("{p}.getterOptions.checksum"), e);
                    }
                }
                "filename" | "archive" => {}
                other => errs.add(
                    &format!("{p}.getterOptions.{other}"),
                    "unknown option (supported: checksum, filename)",
                ),
            }
        }
    }
    for (i, tpl) in t.templates.iter().enumerate() {
        let p = format!("{path}.templates[{i}]");
        if let Err(e) = check_task_relative_path(&tpl.dest_path) {
            errs.add(&format!("{p}.destPath"), e);
        }
        match (&tpl.embedded_tmpl, &tpl.source_path) {
            (None, None) => errs.add(&p, "one of embeddedTmpl or sourcePath is required"),
            (Some(_), Some(_)) => errs.add(&p, "embeddedTmpl and sourcePath are mutually exclusive"),
            (None, Some(src)) => {
                if let Err(e) = check_task_relative_path(src) {
                    errs.add(&format!("{p}.sourcePath"), e);
                }
            }
            _ => {}
        }
        if let Some(perms) = &tpl.perms {
            if perms.is_empty() || perms.len() > 4 || u32::from_str_radix(perms, 8).is_err() {
                errs.add(
                    &format!("{p}.perms"),
                    format!("{perms:?} is not an octal file mode such as \"0644\""),
                );
            }
        }
        if let Some(mode) = &tpl.change_mode {
            if !["restart", "noop", "signal"].contains(&mode.as_str()) {
                errs.add(
                    &format!("{p}.changeMode"),
                    format!("{mode:?} is not one of restart, noop, signal"),
                );
            }
            if mode == "signal" && tpl.change_signal.is_none() {
                errs.add(&format!("{p}.changeSignal"), "is required when changeMode is signal");
            }
        }
        if let Some(sig) = &tpl.change_signal {
            if !SIGNALS.contains(&sig.as_str()) {
                errs.add(
                    &format!("{p}.changeSignal"),
                    format!("{sig:?} is not a known signal (e.g. SIGHUP)"),
                );
            }
        }
    }
    for (i, s) in t.services.iter().enumerate() {
        let p = format!("{path}.services[{i}]");
        if let Err(e) = check_dns_label(&s.name) {
            errs.add(&format!("{p}.name"), e);
        }
        for (j, c) in s.checks.iter().enumerate() {
            let cp = format!("{p}.checks[{j}]");
            if c.name.is_empty() {
                errs.add(&format!("{cp}.name"), "must not be empty");
            }
            match c.check_type.as_str() {
                "http" | "tcp" => {
                    // The label the check uses: its own, else its service's.
                    let (port, field) = match &c.port_label {
                        Some(l) => (l.as_str(), format!("{cp}.portLabel")),
                        None if !s.port_label.is_empty() => (s.port_label.as_str(), format!("{p}.portLabel")),
                        None => ("", format!("{cp}.portLabel")),
                    };
                    let numeric = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
                    if !numeric {
                        // The original implementation accepted such checks
                        // and never ran them: accepted, said, not run.
                        errs.warn(
                            &field,
                            format!(
                                "{port:?} names no port this agent can probe ({} checks need a port number, 1-65535): the check {:?} is not run",
                                c.check_type, c.name
                            ),
                        );
                    } else if port.parse::<u16>().map_or(true, |p| p == 0) {
                        errs.add(&field, format!("{port:?} is not a valid port (1-65535)"));
                    }
                }
                "script" => {
                    if c.command.as_deref().unwrap_or("").is_empty() {
                        errs.add(&format!("{cp}.command"), "is required for script checks");
                    }
                }
                other => errs.add(
                    &format!("{cp}.type"),
                    format!("{other:?} is not supported (http, tcp, script)"),
                ),
            }
            errs.duration(&format!("{cp}.interval"), &c.interval);
            errs.duration(&format!("{cp}.timeout"), &c.timeout);
        }
    }
    if let Some(r) = &t.resources {
        check_resources(errs, &format!("{path}.resources"), r);
    }
    if let Some(scope) = &t.scope {
        if scope != "robot" && scope != "group" {
            errs.add(
                &format!("{path}.scope"),
                format!("{scope:?} is not one of group, robot"),
            );
        } else if scope == "robot" && !(role == TaskRole::Init && t.daemon) {
            errs.add(
                &format!("{path}.scope"),
                "robot scope is only allowed on init tasks with daemon: true",
            );
        }
    }
    if role != TaskRole::Object {
        for (set, field) in [
            (t.job_name.is_some(), "jobName"),
            (t.task_group_name.is_some(), "taskGroupName"),
            (t.job_type.is_some(), "jobType"),
            (t.replica_index.is_some(), "replicaIndex"),
            (t.target_robot.is_some(), "targetRobot"),
            (!t.init_tasks.is_empty(), "initTasks"),
            (!t.constraints.is_empty(), "constraints"),
            (t.disconnect.is_some(), "disconnect"),
        ] {
            if set {
                errs.add(
                    &format!("{path}.{field}"),
                    "is set by the control plane and not allowed in a task template",
                );
            }
        }
    }
    if role == TaskRole::Init && t.network.is_some() {
        errs.add(
            &format!("{path}.network"),
            "init tasks cannot declare a network; put it on the task group",
        );
    }
}

/// The parts of a task group common to Job templates and TaskGroup objects.
struct GroupView<'a> {
    count: i32,
    init_tasks: &'a [TaskSpec],
    tasks: &'a [TaskSpec],
    network: Option<&'a NetworkConfig>,
    constraints: &'a [Constraint],
    restart_policy: Option<&'a RestartPolicy>,
    reschedule_policy: Option<&'a ReschedulePolicy>,
    resources: Option<&'a Resources>,
    disconnect: Option<&'a DisconnectPolicy>,
}

fn check_group(errs: &mut Errors, path: &str, g: &GroupView<'_>) {
    if !(1..=MAX_COUNT).contains(&g.count) {
        errs.add(
            &format!("{path}.count"),
            format!("{} is out of range (1-{MAX_COUNT})", g.count),
        );
    }
    if g.tasks.is_empty() {
        errs.add(&format!("{path}.tasks"), "at least one task is required");
    }
    let mut task_names = HashSet::new();
    let mut robot_scoped = HashSet::new();
    for (list, field, role) in [
        (g.init_tasks, "initTasks", TaskRole::Init),
        (g.tasks, "tasks", TaskRole::Main),
    ] {
        for (i, t) in list.iter().enumerate() {
            let p = format!("{path}.{field}[{i}]");
            check_task(errs, &p, t, role);
            if !t.name.is_empty() && !task_names.insert(t.name.clone()) {
                errs.add(
                    &format!("{p}.name"),
                    format!("duplicate task name {:?} in this task group", t.name),
                );
            }
            if t.is_robot_scoped() {
                robot_scoped.insert(t.name.clone());
            }
        }
    }
    let mut ports = BTreeMap::new();
    let mut upstream_names = HashSet::new();
    if let Some(net) = g.network {
        check_network(errs, &format!("{path}.network"), net, &mut ports, &mut upstream_names);
    }
    for (i, t) in g.tasks.iter().enumerate() {
        if let Some(net) = &t.network {
            check_network(
                errs,
                &format!("{path}.tasks[{i}].network"),
                net,
                &mut ports,
                &mut upstream_names,
            );
        }
    }
    for (i, c) in g.constraints.iter().enumerate() {
        const OPERANDS: &[&str] = &["=", "!=", ">", ">=", "<", "<=", "regexp", "set_contains", "version"];
        if !OPERANDS.contains(&c.operand.as_str()) {
            errs.add(
                &format!("{path}.constraints[{i}].operand"),
                format!("{:?} is not one of {}", c.operand, OPERANDS.join(", ")),
            );
        }
        if c.l_target.is_empty() {
            errs.add(&format!("{path}.constraints[{i}].lTarget"), "must not be empty");
        }
    }
    if let Some(rp) = g.restart_policy {
        check_restart_policy(errs, &format!("{path}.restartPolicy"), rp);
    }
    if let Some(rp) = g.reschedule_policy {
        check_reschedule_policy(errs, &format!("{path}.reschedulePolicy"), rp);
    }
    if let Some(r) = g.resources {
        check_resources(errs, &format!("{path}.resources"), r);
    }
    if let Some(d) = g.disconnect {
        check_disconnect(errs, &format!("{path}.disconnect"), d);
    }
}

fn check_disconnect(errs: &mut Errors, path: &str, d: &DisconnectPolicy) {
    errs.duration(&format!("{path}.lostAfter"), &d.lost_after);
    errs.duration(&format!("{path}.stopOnClientAfter"), &d.stop_on_client_after);
    if let Some(r) = &d.reconcile {
        const MODES: &[&str] = &["keepOriginal", "keepReplacement", "bestScore", "longestRunning"];
        if !MODES.contains(&r.as_str()) {
            errs.add(
                &format!("{path}.reconcile"),
                format!("{r:?} is not one of {}", MODES.join(", ")),
            );
        }
    }
}

fn check_meta(errs: &mut Errors, meta: &super::meta::ObjectMeta) {
    if meta.name.is_empty() {
        if meta.generate_name.is_none() {
            errs.add("metadata.name", "is required");
        }
    } else if let Err(e) = check_dns_subdomain(&meta.name) {
        errs.add("metadata.name", e);
    }
    if let Some(ns) = &meta.namespace {
        if let Err(e) = check_dns_label(ns) {
            errs.add("metadata.namespace", e);
        }
    }
    check_labels(errs, "metadata.labels", &meta.labels);
}

fn check_selector(errs: &mut Errors, path: &str, sel: &RobotSelector) {
    check_labels(errs, &format!("{path}.matchLabels"), &sel.match_labels);
    for (i, e) in sel.match_expressions.iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        if let Err(m) = check_label_key(&e.key) {
            errs.add(&format!("{p}.key"), m);
        }
        match e.operator.as_str() {
            "In" | "NotIn" if e.values.is_empty() => errs.add(
                &format!("{p}.values"),
                format!("must not be empty for operator {}", e.operator),
            ),
            "Exists" | "DoesNotExist" if !e.values.is_empty() => errs.add(
                &format!("{p}.values"),
                format!("must be empty for operator {}", e.operator),
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.add(
                &format!("{p}.operator"),
                format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
            ),
        }
    }
}

pub fn validate_job(job: &Job) -> Vec<FieldError> {
    review_job(job).errors
}

fn review_job(job: &Job) -> Findings {
    let mut errs = Errors::default();
    check_meta(&mut errs, &job.metadata);
    let spec = &job.spec;
    if !spec.name.is_empty() && spec.name != job.metadata.name && !job.metadata.name.is_empty() {
        errs.add(
            "spec.name",
            format!(
                "{:?} must match metadata.name {:?} (or be omitted)",
                spec.name, job.metadata.name
            ),
        );
    }
    if let Some(p) = spec.priority {
        if !(0..=100).contains(&p) {
            errs.add("spec.priority", format!("{p} is out of range (0-100)"));
        }
    }
    if let Some(sel) = &spec.robot_selector {
        check_selector(&mut errs, "spec.robotSelector", sel);
    }
    if spec.task_groups.is_empty() {
        errs.add("spec.taskGroups", "at least one task group is required");
    }
    let mut names = HashSet::new();
    for (i, g) in spec.task_groups.iter().enumerate() {
        let path = format!("spec.taskGroups[{i}]");
        match check_dns_label(&g.name) {
            Err(e) => errs.add(&format!("{path}.name"), e),
            Ok(()) => {
                if !names.insert(g.name.as_str()) {
                    errs.add(
                        &format!("{path}.name"),
                        format!("duplicate task group name {:?}", g.name),
                    );
                }
            }
        }
        check_group(
            &mut errs,
            &path,
            &GroupView {
                count: g.count,
                init_tasks: &g.init_tasks,
                tasks: &g.tasks,
                network: g.network.as_ref(),
                constraints: &g.constraints,
                restart_policy: g.restart_policy.as_ref(),
                reschedule_policy: g.reschedule_policy.as_ref(),
                resources: g.resources.as_ref(),
                disconnect: g.disconnect.as_ref(),
            },
        );
        if let Some(u) = &g.update {
            errs.0
                .errors
                .extend(check_update(&format!("{path}.update"), spec.job_type, u));
        }
        // As in Nomad: a system group has exactly one replica per matching
        // robot, so a count above 1 is a mistake, not a wish to honour.
        if spec.job_type == JobType::System && g.count > 1 {
            errs.add(
                &format!("{path}.count"),
                format!(
                    "{} is not allowed for a system job: it runs one replica on every matching robot (omit count or set 1)",
                    g.count
                ),
            );
        }
    }
    errs.0
}

fn review_task_group(tg: &TaskGroup) -> Findings {
    let mut errs = Errors::default();
    check_meta(&mut errs, &tg.metadata);
    let s = &tg.spec;
    if let Err(e) = check_dns_subdomain(&s.job_name) {
        errs.add("spec.jobName", e);
    }
    if let Err(e) = check_dns_label(&s.group_name) {
        errs.add("spec.groupName", e);
    }
    check_group(
        &mut errs,
        "spec",
        &GroupView {
            count: s.count,
            init_tasks: &s.init_tasks,
            tasks: &s.tasks,
            network: s.network.as_ref(),
            constraints: &s.constraints,
            restart_policy: s.restart_policy.as_ref(),
            reschedule_policy: s.reschedule_policy.as_ref(),
            resources: s.resources.as_ref(),
            disconnect: s.disconnect.as_ref(),
        },
    );
    errs.0
}

pub fn validate_task(task: &Task) -> Vec<FieldError> {
    review_task(task).errors
}

fn review_task(task: &Task) -> Findings {
    let mut errs = Errors::default();
    check_meta(&mut errs, &task.metadata);
    check_task(&mut errs, "spec", &task.spec, TaskRole::Object);
    for (i, it) in task.spec.init_tasks.iter().enumerate() {
        check_task(&mut errs, &format!("spec.initTasks[{i}]"), it, TaskRole::Init);
    }
    if let Some(net) = &task.spec.network {
        check_network(
            &mut errs,
            "spec.network",
            net,
            &mut BTreeMap::new(),
            &mut HashSet::new(),
        );
    }
    // Carried to the robot, which adds it to its clock when offline.
    if let Some(d) = &task.spec.disconnect {
        check_disconnect(&mut errs, "spec.disconnect", d);
    }
    errs.0
}

pub fn validate_robot(robot: &Robot) -> Vec<FieldError> {
    let mut errs = Errors::default();
    check_meta(&mut errs, &robot.metadata);
    check_labels(&mut errs, "spec.labels", &robot.spec.labels);
    errs.0.errors
}

#[cfg(feature = "server")]
pub fn validate_agent_release(r: &super::agent_release::AgentRelease) -> Vec<FieldError> {
    let mut errs = Errors::default();
    check_meta(&mut errs, &r.metadata);
    if let Some(sel) = &r.spec.robot_selector {
        check_selector(&mut errs, "spec.robotSelector", sel);
    }
    for (field, message) in super::agent_release::spec_problems(&r.spec) {
        errs.add(&field, message);
    }
    let namespaces = r.spec.namespaces.as_deref().unwrap_or_default();
    for (i, ns) in namespaces.iter().enumerate().take(super::agent_release::MAX_NAMESPACES) {
        if let Err(m) = check_dns_label(ns) {
            errs.add(&format!("spec.namespaces[{i}]"), m);
        }
    }
    errs.0.errors
}

/// The errors of `obj` (empty: valid).
pub fn validate(obj: &super::decode::AnyObject) -> Vec<FieldError> {
    review(obj).errors
}

/// Errors and warnings of `obj`.
pub fn review(obj: &super::decode::AnyObject) -> Findings {
    use super::decode::AnyObject;
    match obj {
        AnyObject::Job(o) => review_job(o),
        AnyObject::TaskGroup(o) => review_task_group(o),
        AnyObject::Task(o) => review_task(o),
        AnyObject::Robot(o) => Findings {
            errors: validate_robot(o),
            warnings: Vec::new(),
        },
        #[cfg(feature = "server")]
        AnyObject::Rollout(o) => review_rollout(o),
        #[cfg(feature = "server")]
        AnyObject::AgentRelease(o) => Findings {
            errors: validate_agent_release(o),
            warnings: Vec::new(),
        },
    }
}

/// A Rollout: its version's template must be a valid Job spec (a revert
/// writes it back into the Job).
#[cfg(feature = "server")]
fn review_rollout(r: &super::rollout::Rollout) -> Findings {
    let mut errs = Errors::default();
    check_meta(&mut errs, &r.metadata);
    if let Err(e) = check_dns_subdomain(&r.spec.job_name) {
        errs.add("spec.jobName", e);
    }
    if r.spec.version < 1 {
        errs.add("spec.version", format!("{} must be at least 1", r.spec.version));
    }
    let ns = r.metadata.namespace.as_deref().unwrap_or("default");
    let job = Job::new("Job", &r.spec.job_name, ns, r.spec.template.clone());
    // The Job's name is checked above; its spec's findings are the template's.
    for e in review_job(&job).errors {
        if let Some(field) = e.field.strip_prefix("spec.") {
            errs.add(&format!("spec.template.{field}"), e.message);
        }
    }
    errs.0
}

/// The errors of `u`, the update block at `path` of a group of a `job_type` job.
pub fn check_update(path: &str, job_type: JobType, u: &UpdateStrategy) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if job_type == JobType::Batch {
        errs.push(FieldError::new(
            path,
            "batch jobs run to completion and are not rolled out (update applies to service and system jobs)",
        ));
    }
    let count = |field: &str, v: &Option<CountOrPercent>, least: i64, errs: &mut Vec<FieldError>| {
        let f = format!("{path}.{field}");
        match v {
            None => {}
            Some(CountOrPercent::Count(n)) if *n < least || *n > i64::from(MAX_COUNT) => errs.push(FieldError::new(
                &f,
                format!("{n} is out of range ({least}-{})", MAX_COUNT),
            )),
            Some(CountOrPercent::Count(_)) => {}
            Some(CountOrPercent::Percent(p)) if job_type != JobType::System => errs.push(FieldError::new(
                &f,
                format!("{p}%: a percentage is for system jobs (of their matching robots); give a number of robots"),
            )),
            Some(CountOrPercent::Percent(p)) if *p > 100 || (*p < 1 && least > 0) => {
                errs.push(FieldError::new(&f, format!("{p}% is out of range ({least}%-100%)")))
            }
            Some(CountOrPercent::Percent(_)) => {}
            Some(CountOrPercent::Invalid(t)) => errs.push(FieldError::new(
                &f,
                format!("{t:?} is neither a number of robots nor a percentage such as \"10%\""),
            )),
        }
    };
    count("maxParallel", &u.max_parallel, 1, &mut errs);
    count("canary", &u.canary, 0, &mut errs);
    let durations = [
        ("minHealthyTime", &u.min_healthy_time),
        ("healthyDeadline", &u.healthy_deadline),
        ("progressDeadline", &u.progress_deadline),
        ("stagger", &u.stagger),
        ("lockDeadline", &u.lock_deadline),
    ];
    for (field, d) in durations {
        let Some(d) = d else { continue };
        let f = format!("{path}.{field}");
        match d.get() {
            None => errs.push(FieldError::new(&f, d.error().unwrap_or("invalid duration").to_string())),
            Some(v) => {
                if let Err(e) = check_max_duration(v, d.text()) {
                    errs.push(FieldError::new(&f, e));
                }
            }
        }
    }
    let s = u.resolve();
    if errs.is_empty() && s.min_healthy_time >= s.healthy_deadline {
        errs.push(FieldError::new(
            &format!("{path}.minHealthyTime"),
            format!(
                "{:?} must be less than healthyDeadline ({:?}): no replica could ever be healthy in time",
                s.min_healthy_time, s.healthy_deadline
            ),
        ));
    }
    if errs.is_empty() && s.healthy_deadline > s.progress_deadline {
        errs.push(FieldError::new(
            &format!("{path}.progressDeadline"),
            format!(
                "{:?} must be at least healthyDeadline ({:?})",
                s.progress_deadline, s.healthy_deadline
            ),
        ));
    }
    errs
}

#[cfg(test)]
mod update_tests {
    use super::*;
    use serde_json::json;

    fn update(v: serde_json::Value) -> UpdateStrategy {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn percentages_round_up_and_are_for_system_jobs() {
        let u = update(json!({"maxParallel": "10%", "canary": "5%"}));
        assert_eq!(u.resolve().max_parallel.of(1000), 100);
        assert_eq!(u.resolve().canary.of(3), 1);
        assert_eq!(u.resolve().canary.of(0), 0);
        assert!(check_update("u", JobType::System, &u).is_empty());
        let errs = check_update("spec.taskGroups[0].update", JobType::Service, &u);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].field, "spec.taskGroups[0].update.maxParallel");
        assert!(errs[0].message.contains("system jobs"), "{}", errs[0].message);
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            json!({"maxParallel": "10%", "canary": "5%"})
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let u = update(json!({"maxParallel": 0, "canary": "lots", "minHealthyTime": "soon", "stagger": "5s"}));
        let fields: Vec<String> = check_update("u", JobType::Service, &u)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["u.maxParallel", "u.canary", "u.minHealthyTime"]);
        let u = update(json!({"minHealthyTime": "5m", "healthyDeadline": "1m"}));
        assert_eq!(check_update("u", JobType::Service, &u)[0].field, "u.minHealthyTime");
        let u = update(json!({"healthyDeadline": "20m"}));
        assert_eq!(check_update("u", JobType::Service, &u)[0].field, "u.progressDeadline");
        let errs = check_update("u", JobType::Batch, &UpdateStrategy::default());
        assert_eq!(errs[0].field, "u");
        assert!(
            check_update("u", JobType::System, &update(json!({"maxParallel": "101%"})))[0]
                .message
                .contains("out of range")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert!(check_host_port("db.example.com:5432").is_ok());
        assert!(check_host_port("10.0.0.1:80").is_ok());
        assert!(check_host_port("[::1]:443").is_ok());
        assert!(check_host_port("db.example.com").is_err());
        assert!(check_host_port("db:0").is_err());
        assert!(check_host_port("db:70000").is_err());
        assert!(check_host_port("bad_host:80").is_err());
    }

    #[test]
    fn relative_paths() {
        assert!(check_task_relative_path("local/app.conf").is_ok());
        assert!(check_task_relative_path("${K8S4R_TASK_DIR}/local/x").is_ok());
        assert!(check_task_relative_path("../x").is_err());
        assert!(check_task_relative_path("local/../../x").is_err());
        assert!(check_task_relative_path("/etc/passwd").is_err());
        assert!(check_task_relative_path("${K8S4R_TASK_DIR}/../x").is_err());
        // Nomad's absolute task paths, whole components only.
        for ok in ["/local/app.conf", "/secrets/token", "/alloc/data/x", "/local/"] {
            assert!(check_task_relative_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/localx/y",
            "/etc/local/x",
            "/secret/x",
            "/alloc/../etc/x",
            "/tmp/x",
            "/",
        ] {
            assert!(check_task_relative_path(bad).is_err(), "{bad}");
        }
    }

    fn job_with_task(task_yaml: &str) -> Job {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: robot.k8s4r.io/v1alpha1\nkind: Job\nmetadata: {{name: j}}\nspec:\n  taskGroups:\n  - name: g\n    tasks:\n    - {{name: t, driver: exec, config: {{execConfig: {{command: /bin/true}}}}, {task_yaml}}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn every_duration_is_bounded_with_its_field_and_the_limit() {
        let t = "spec.taskGroups[0].tasks[0]";
        for (yaml, field) in [
            ("timeout: 3000000000000000h", format!("{t}.timeout")),
            ("killTimeout: 87601h", format!("{t}.killTimeout")),
            (
                "restartPolicy: {interval: 9999999h}",
                format!("{t}.restartPolicy.interval"),
            ),
            ("restartPolicy: {delay: 9999999h}", format!("{t}.restartPolicy.delay")),
            (
                "services: [{name: s, checks: [{name: c, type: tcp, portLabel: '80', interval: 9999999h}]}]",
                format!("{t}.services[0].checks[0].interval"),
            ),
            (
                "services: [{name: s, checks: [{name: c, type: tcp, portLabel: '80', timeout: 9999999h}]}]",
                format!("{t}.services[0].checks[0].timeout"),
            ),
        ] {
            let errs = validate_job(&job_with_task(yaml));
            assert_eq!(errs.len(), 1, "{yaml}: {errs:?}");
            assert_eq!(errs[0].field, field, "{yaml}");
            assert!(
                errs[0]
                    .message
                    .ends_with("is longer than the maximum of 87600h (10 years)"),
                "{}",
                errs[0]
            );
        }
        assert_eq!(
            validate_job(&job_with_task("timeout: 87600h")),
            vec![],
            "the limit itself is fine"
        );
        // Group-level durations and a Task object's disconnect policy too.
        let mut job = job_with_task("timeout: 1s");
        let g = &mut job.spec.task_groups[0];
        g.disconnect = Some(DisconnectPolicy {
            stop_on_client_after: Some(Duration::new("100000h")),
            ..Default::default()
        });
        g.reschedule_policy = Some(ReschedulePolicy {
            max_delay: Some(Duration::new("100000h")),
            ..Default::default()
        });
        let fields: Vec<String> = validate_job(&job).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            vec![
                "spec.taskGroups[0].reschedulePolicy.maxDelay",
                "spec.taskGroups[0].disconnect.stopOnClientAfter"
            ]
        );
        let task: Task = serde_yaml_ng::from_str(
            "apiVersion: robot.k8s4r.io/v1alpha1\nkind: Task\nmetadata: {name: t}\nspec: {name: t, driver: exec, config: {execConfig: {command: /bin/true}}, disconnect: {lostAfter: 100000h}}\n",
        )
        .unwrap();
        let errs = validate_task(&task);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.disconnect.lostAfter");
    }

    #[test]
    fn a_check_on_a_port_label_that_names_no_port_is_a_warning() {
        let t = "spec.taskGroups[0].tasks[0]";
        let job = job_with_task(
            "services: [{name: web, portLabel: http, checks: [{name: alive, type: http, path: /health}, {name: own, type: tcp, portLabel: admin}, {name: s, type: script, command: /bin/true}]}]",
        );
        let f = review(&crate::api::AnyObject::Job(job));
        assert_eq!(f.errors, vec![]);
        assert_eq!(
            f.warnings,
            vec![
                FieldError::new(
                    &format!("{t}.services[0].portLabel"),
                    "\"http\" names no port this agent can probe (http checks need a port number, 1-65535): the check \"alive\" is not run"
                ),
                FieldError::new(
                    &format!("{t}.services[0].checks[1].portLabel"),
                    "\"admin\" names no port this agent can probe (tcp checks need a port number, 1-65535): the check \"own\" is not run"
                ),
            ]
        );
        // A number that is no port is still a mistake.
        let errs = validate_job(&job_with_task(
            "services: [{name: web, checks: [{name: c, type: tcp, portLabel: '70000'}]}]",
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            errs[0].to_string(),
            format!("{t}.services[0].checks[0].portLabel: \"70000\" is not a valid port (1-65535)")
        );
    }

    #[test]
    fn spiffe_ids() {
        assert!(check_spiffe_id("spiffe://example.org/db", Some("example.org")).is_ok());
        assert!(check_spiffe_id("spiffe://other.org/db", Some("example.org")).is_err());
        assert!(check_spiffe_id("http://example.org/db", None).is_err());
        assert!(check_spiffe_id("spiffe://example.org/a/../b", None).is_err());
    }

    #[test]
    fn a_system_job_has_one_replica_per_robot() {
        let job = |kind: &str, count: &str| -> Job {
            serde_yaml_ng::from_str(&format!(
                "apiVersion: robot.k8s4r.io/v1alpha1\nkind: Job\nmetadata: {{name: j}}\nspec:\n  type: {kind}\n  taskGroups:\n  - name: g\n{count}    tasks: [{{name: t, driver: exec, config: {{execConfig: {{command: /bin/true}}}}}}]\n"
            ))
            .unwrap()
        };
        assert_eq!(validate_job(&job("system", "")), vec![], "count omitted");
        assert_eq!(validate_job(&job("system", "    count: 1\n")), vec![]);
        assert_eq!(validate_job(&job("service", "    count: 3\n")), vec![]);
        let errs = validate_job(&job("system", "    count: 3\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.taskGroups[0].count");
        assert!(
            errs[0].message.contains("one replica on every matching robot"),
            "{}",
            errs[0]
        );
    }
}
