//! The scheduler's view of one namespace, built from the cache: robots with
//! their labels, attributes and capacity, and what is already placed on each
//! (ports, replicas per group, requests).

use super::Ctx;
use crate::api::job_expansion;
use crate::api::{TaskGroupTemplate, TaskState};
use crate::server::object;
use crate::server::scheduler::RobotInfo;
use crate::server::stored_task;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Ports the group's Envoy listens on: upstream localPorts (127.0.0.1)
/// and inbound ports (the robot's network). Both are per-robot resources.
pub fn group_ports(g: &TaskGroupTemplate) -> BTreeSet<i64> {
    job_expansion::group_network(g.network.as_ref(), &g.tasks)
        .filter(|n| n.is_active())
        .map(|n| {
            n.upstreams
                .iter()
                .map(|u| u.local_port)
                .chain(n.inbound.iter().map(|i| i.port))
                .collect()
        })
        .unwrap_or_default()
}

fn value_ports(v: &Value) -> Vec<i64> {
    let Some(net) = v.get("spec").and_then(|s| s.get("network")) else {
        return vec![];
    };
    let active = net.get("enabled").and_then(Value::as_bool).unwrap_or(true)
        && net.get("type").and_then(Value::as_str).unwrap_or("envoy") == "envoy";
    if !active {
        return vec![];
    }
    let ports = |list: &str, field: &str| -> Vec<i64> {
        net.get(list)
            .and_then(Value::as_array)
            .map(|xs| xs.iter().filter_map(|x| x.get(field)?.as_i64()).collect())
            .unwrap_or_default()
    };
    let mut out = ports("upstreams", "localPort");
    out.extend(ports("inbound", "port"));
    out
}

/// (milli-cores, bytes) a Task object requests.
fn value_requests(v: &Value) -> (i128, i128) {
    let res = v.get("spec").and_then(|s| s.get("resources"));
    let q = |f: &str| -> Option<crate::api::Quantity> { serde_json::from_value(res?.get(f)?.clone()).ok() };
    (
        q("cpu").and_then(|c| c.milli()).unwrap_or(0),
        q("memory").and_then(|m| m.units_ceil()).unwrap_or(0),
    )
}

/// What the scheduler needs to place one replica of group `g` of `job`
/// (`tg_name` is the TaskGroup's name, `{job}-{group}`).
pub fn placement_request<'a>(
    ns: &str,
    tg_name: &str,
    job: &'a crate::api::types::Job,
    g: &'a TaskGroupTemplate,
) -> crate::server::scheduler::Request<'a> {
    let (cpu, memory) = group_requests(g);
    crate::server::scheduler::Request {
        cpu,
        memory,
        group: format!("{ns}/{tg_name}"),
        selector: job.spec.robot_selector.as_ref(),
        constraints: &g.constraints,
        ports: group_ports(g),
        tasks: g.tasks.len() as u32,
    }
}

/// (milli-cores, bytes) one replica of `g` requests.
pub fn group_requests(g: &TaskGroupTemplate) -> (i128, i128) {
    g.tasks
        .iter()
        .filter_map(|t| t.resources.as_ref())
        .fold((0, 0), |(c, m), r| {
            (
                c + r.cpu.as_ref().and_then(|q| q.milli()).unwrap_or(0),
                m + r.memory.as_ref().and_then(|q| q.units_ceil()).unwrap_or(0),
            )
        })
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>, depth: usize) {
    match v {
        Value::Object(m) if depth < 4 => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out, depth + 1);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        Value::Number(_) | Value::Bool(_) => {
            out.insert(prefix.to_string(), v.to_string());
        }
        _ => {}
    }
}

/// The robots of `ns` with their labels, attributes and capacity, but
/// nothing of what is placed on them (cheap: no pass over the tasks).
pub fn robots(ctx: &Ctx, ns: &str) -> Vec<RobotInfo> {
    ctx.cache()
        .list("robots", Some(ns))
        .iter()
        .map(|r| {
            // One label set: metadata.labels (the agent's land there too).
            let labels = crate::server::object::string_map(r.get("metadata").and_then(|m| m.get("labels")));
            let mut attrs = BTreeMap::new();
            if let Some(d) = r.get("status").and_then(|s| s.get("deviceInfo")) {
                flatten("", d, &mut attrs, 0);
            }
            let device = r.get("status").and_then(|s| s.get("deviceInfo"));
            let num = |path: &[&str]| -> Option<i128> {
                let mut v = device?;
                for p in path {
                    v = v.get(*p)?;
                }
                v.as_u64().map(i128::from)
            };
            RobotInfo {
                name: object::name(r).to_string(),
                online: r.get("status").and_then(|s| s.get("phase")).and_then(Value::as_str) == Some("Online"),
                labels,
                attrs,
                cpu_capacity: num(&["cpu", "logicalCores"]).map(|c| c * 1000),
                memory_capacity: num(&["memory", "total"]),
                ..Default::default()
            }
        })
        .collect()
}

/// The robots of `ns` with what is already placed on them.
pub fn snapshot(ctx: &Ctx, ns: &str) -> Vec<RobotInfo> {
    let mut robots = robots(ctx, ns);
    let index: HashMap<String, usize> = robots.iter().enumerate().map(|(i, r)| (r.name.clone(), i)).collect();
    let mut seen = HashSet::new();
    for t in ctx.cache().list("tasks", Some(ns)) {
        let Some(&i) = stored_task::target_robot(&t).and_then(|r| index.get(r)) else {
            continue;
        };
        // A Lost system replica still holds its robot's resources: it is
        // never moved and resumes there when the robot is back.
        let system = t.get("spec").and_then(|s| s.get("jobType")).and_then(Value::as_str) == Some("system");
        let state = stored_task::state(&t);
        if state.is_terminal() && !(system && state == TaskState::Lost) {
            continue;
        }
        let group = format!("{ns}/{}", stored_task::task_group_name(&t).unwrap_or(""));
        let replica = t
            .get("spec")
            .and_then(|s| s.get("replicaIndex"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let r = &mut robots[i];
        r.load += 1;
        let (cpu, memory) = value_requests(&t);
        r.cpu_used += cpu;
        r.memory_used += memory;
        for p in value_ports(&t) {
            r.ports.insert(p, group.clone());
        }
        // One replica of a group, however many tasks it has (replicas of
        // a system group all have index 0, one per robot).
        if seen.insert((group.clone(), replica, i)) {
            *r.replicas.entry(group).or_default() += 1;
        }
    }
    robots
}
