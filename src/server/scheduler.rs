//! Placement: which robot runs a replica of a task group. Pure functions
//! over a snapshot of the fleet, so the rules are tested without a server.
//!
//! Rules, in order: the robot is Online; it matches the Job's robotSelector
//! (matchLabels and matchExpressions over the robot's labels) and the
//! group's constraints; none of the group's localPorts is used on it by
//! another group (Envoy listens on them); its CPU and memory (as the agent
//! reports them) hold the replica's requests next to what is placed there;
//! then replicas are spread: fewest replicas of this group first, then
//! least-loaded robot, then name. A system group is not spread: it has one
//! replica on every robot that matches ([`place_system`]).

use crate::api::{Constraint, RobotSelector, StringMap};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

/// One robot as the scheduler sees it.
#[derive(Clone, Debug, Default)]
pub struct RobotInfo {
    pub name: String,
    pub online: bool,
    /// metadata.labels (the operator's and the agent's).
    pub labels: StringMap,
    /// Attributes for constraints (`${attr.os}` ...), from device info.
    pub attrs: StringMap,
    /// localPort -> the group (`ns/job/group`) holding it.
    pub ports: HashMap<i64, String>,
    /// Replicas per group key placed here.
    pub replicas: HashMap<String, u32>,
    /// Tasks placed here, all groups.
    pub load: u32,
    /// Capacity (milli-cores, bytes); None when the robot did not report it.
    pub cpu_capacity: Option<i128>,
    pub memory_capacity: Option<i128>,
    /// Requests of the tasks placed here.
    pub cpu_used: i128,
    pub memory_used: i128,
}

/// What one replica of a group needs.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// `ns/job/group`.
    pub group: String,
    pub selector: Option<&'a RobotSelector>,
    pub constraints: &'a [Constraint],
    pub ports: BTreeSet<i64>,
    /// Tasks per replica (load added by one placement).
    pub tasks: u32,
    /// Requests of one replica (sum over its tasks): milli-cores, bytes.
    pub cpu: i128,
    pub memory: i128,
}

/// Why nothing fits: reason -> number of robots it excluded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unschedulable {
    pub total: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl std::fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.total == 0 {
            return f.write_str("no robots are registered");
        }
        write!(f, "0/{} robots are available", self.total)?;
        for (i, (reason, n)) in self.reasons.iter().enumerate() {
            write!(f, "{} {n} {reason}", if i == 0 { ":" } else { "," })?;
        }
        Ok(())
    }
}

fn resolve<'a>(target: &'a str, robot: &'a RobotInfo) -> Option<&'a str> {
    let Some(inner) = target.strip_prefix("${").and_then(|t| t.strip_suffix('}')) else {
        return Some(target);
    };
    if inner == "node.name" || inner == "node.unique.name" {
        return Some(&robot.name);
    }
    if let Some(k) = inner.strip_prefix("meta.").or_else(|| inner.strip_prefix("label.")) {
        return robot.labels.get(k).map(String::as_str);
    }
    if let Some(k) = inner.strip_prefix("attr.").or_else(|| inner.strip_prefix("node.")) {
        return robot.attrs.get(k).or_else(|| robot.labels.get(k)).map(String::as_str);
    }
    None
}

fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<u64> {
        s.trim_start_matches('v')
            .split(['.', '-'])
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

fn ordered(op: &str, l: &str, r: &str) -> bool {
    use std::cmp::Ordering::*;
    let ord = match (l.parse::<f64>(), r.parse::<f64>()) {
        (Ok(a), Ok(b)) => a.partial_cmp(&b).unwrap_or(Equal),
        _ => l.cmp(r),
    };
    match op {
        ">" => ord == Greater,
        ">=" => ord != Less,
        "<" => ord == Less,
        "<=" => ord != Greater,
        _ => false,
    }
}

/// Does `robot` satisfy `c`? `Err` names the unsatisfied rule.
pub fn check_constraint(c: &Constraint, robot: &RobotInfo) -> Result<(), String> {
    let l = resolve(&c.l_target, robot);
    let r = resolve(&c.r_target, robot).unwrap_or("");
    let ok = match (c.operand.as_str(), l) {
        ("=" | "==", Some(l)) => l == r,
        ("=" | "==", None) => false,
        ("!=", l) => l != Some(r),
        (op @ (">" | ">=" | "<" | "<="), Some(l)) => ordered(op, l, r),
        ("set_contains", Some(l)) => {
            let have: BTreeSet<&str> = l.split(',').map(str::trim).collect();
            r.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .all(|x| have.contains(x))
        }
        ("version", Some(l)) => r.split(',').map(str::trim).filter(|x| !x.is_empty()).all(|cond| {
            let (op, v) = cond
                .find(|ch: char| ch.is_ascii_digit() || ch == 'v')
                .map(|i| (cond[..i].trim(), cond[i..].trim()))
                .unwrap_or(("=", cond));
            let ord = compare_versions(l, v);
            match op {
                "" | "=" | "==" => ord.is_eq(),
                "!=" => !ord.is_eq(),
                ">" => ord.is_gt(),
                ">=" => ord.is_ge(),
                "<" => ord.is_lt(),
                "<=" => ord.is_le(),
                _ => false,
            }
        }),
        ("regexp", _) => return Err("regexp constraints are not supported by this scheduler".into()),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "do not satisfy constraint {} {} {}",
            c.l_target, c.operand, c.r_target
        ))
    }
}

/// Does `robot` belong to the group at all: the Job's robotSelector and the
/// group's constraints (its labels and attributes, not its state or what
/// runs there)?
pub fn eligible(req: &Request<'_>, robot: &RobotInfo) -> Result<(), String> {
    if let Some(sel) = req.selector {
        if !sel.matches(&robot.labels) {
            return Err("do not match robotSelector".into());
        }
    }
    for c in req.constraints {
        check_constraint(c, robot)?;
    }
    Ok(())
}

/// Static fit of `robot` for `req` (everything but spreading).
pub fn fits(req: &Request<'_>, robot: &RobotInfo) -> Result<(), String> {
    if !robot.online {
        return Err("are not Online".into());
    }
    eligible(req, robot)?;
    for p in &req.ports {
        if let Some(holder) = robot.ports.get(p) {
            if *holder != req.group {
                return Err(format!("already use localPort {p} for another group"));
            }
        }
    }
    if robot.cpu_capacity.is_some_and(|cap| robot.cpu_used + req.cpu > cap) {
        return Err("have insufficient cpu".into());
    }
    if robot
        .memory_capacity
        .is_some_and(|cap| robot.memory_used + req.memory > cap)
    {
        return Err("have insufficient memory".into());
    }
    Ok(())
}

/// Place `replicas` replicas of `req` on `robots`, updating the robots'
/// usage as it goes. Returns one robot name per replica, or why none fits
/// (then no replica is placed at all beyond those that fit: the result has
/// `Some` for placed replicas, `None` for the rest).
pub fn place(
    req: &Request<'_>,
    robots: &mut [RobotInfo],
    replicas: usize,
) -> (Vec<Option<String>>, Option<Unschedulable>) {
    let mut why = Unschedulable {
        total: robots.len(),
        ..Default::default()
    };
    // Min-heap over (replicas of this group, load, name) of fitting robots.
    let mut heap = BinaryHeap::new();
    for (i, r) in robots.iter().enumerate() {
        match fits(req, r) {
            Ok(()) => {
                let mine = r.replicas.get(&req.group).copied().unwrap_or(0);
                heap.push(Reverse((mine, r.load, r.name.clone(), i)));
            }
            Err(reason) => *why.reasons.entry(reason).or_default() += 1,
        }
    }
    let mut out = Vec::with_capacity(replicas);
    for _ in 0..replicas {
        // Capacity shrinks as replicas land: drop robots that filled up.
        let popped = loop {
            match heap.pop() {
                None => break None,
                Some(Reverse(entry)) => match fits(req, &robots[entry.3]) {
                    Ok(()) => break Some(entry),
                    Err(reason) => *why.reasons.entry(reason).or_default() += 1,
                },
            }
        };
        let Some((mine, load, name, i)) = popped else {
            out.push(None);
            continue;
        };
        reserve(req, &mut robots[i]);
        heap.push(Reverse((mine + 1, load + req.tasks, name.clone(), i)));
        out.push(Some(name));
    }
    let failed = out.iter().any(Option::is_none);
    (out, failed.then_some(why))
}

/// Count one replica of `req` as placed on `r`.
fn reserve(req: &Request<'_>, r: &mut RobotInfo) {
    r.cpu_used += req.cpu;
    r.memory_used += req.memory;
    for p in &req.ports {
        r.ports.insert(*p, req.group.clone());
    }
    *r.replicas.entry(req.group.clone()).or_default() += 1;
    r.load += req.tasks;
}

/// Where a system group runs: one replica on every robot that matches
/// (see [`place_system`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SystemPlan {
    /// Robots whose replica stays: they still match. Whether they are
    /// Online does not matter: a replica belongs to its robot and is never
    /// moved (an Offline robot's replica is Unknown/Lost until it is back).
    pub keep: Vec<String>,
    /// Robots that get a replica now: matching, Online, and it fits there.
    pub add: Vec<String>,
    /// Robots whose replica goes: they no longer match, or are gone.
    pub remove: Vec<String>,
    /// Matching Online robots without a replica where one does not fit
    /// (a localPort another group holds, cpu, memory), with the reason.
    pub unfit: Vec<(String, String)>,
}

/// Place a system group: `placed` are the robots holding a replica now.
/// A matching robot keeps its replica; a matching Online robot without one
/// gets one if it fits ([`fits`]: ports and capacity; usage is updated as
/// replicas land, in name order); a matching Offline robot without one
/// waits until it is Online. Replicas on robots that stopped matching or
/// no longer exist are removed.
pub fn place_system(req: &Request<'_>, robots: &mut [RobotInfo], placed: &BTreeSet<String>) -> SystemPlan {
    let mut plan = SystemPlan::default();
    let mut order: Vec<usize> = (0..robots.len()).collect();
    order.sort_by(|a, b| robots[*a].name.cmp(&robots[*b].name));
    let known: BTreeSet<&str> = robots.iter().map(|r| r.name.as_str()).collect();
    plan.remove = placed.iter().filter(|p| !known.contains(p.as_str())).cloned().collect();
    for i in order {
        let has = placed.contains(&robots[i].name);
        match (eligible(req, &robots[i]), has) {
            (Err(_), true) => plan.remove.push(robots[i].name.clone()),
            (Err(_), false) => {}
            (Ok(()), true) => plan.keep.push(robots[i].name.clone()),
            (Ok(()), false) if !robots[i].online => {}
            (Ok(()), false) => match fits(req, &robots[i]) {
                Ok(()) => {
                    reserve(req, &mut robots[i]);
                    plan.add.push(robots[i].name.clone());
                }
                Err(why) => plan.unfit.push((robots[i].name.clone(), singular(&why))),
            },
        }
    }
    plan.remove.sort();
    plan
}

/// A reason from [`fits`] (worded for "N robots ...") said of one robot.
pub fn singular(reason: &str) -> String {
    for (many, one) in [
        ("are ", "is "),
        ("do not ", "does not "),
        ("already use ", "already uses "),
        ("have ", "has "),
    ] {
        if let Some(rest) = reason.strip_prefix(many) {
            return format!("{one}{rest}");
        }
    }
    reason.to_string()
}

/// `disconnect.reconcile: bestScore`: a robot came back and both it (the
/// original) and `replacement` run a copy of one replica of `req`. Is the
/// original the strictly better home by the rules [`place`] uses? Both
/// robots are given as if neither held the copy being settled. A robot
/// that no longer fits loses; then fewer replicas of the group, then less
/// load. A tie keeps the replacement (the server's current placement, so
/// nothing moves).
pub fn original_scores_better(req: &Request<'_>, original: &RobotInfo, replacement: &RobotInfo) -> bool {
    let key = |r: &RobotInfo| {
        fits(req, r)
            .ok()
            .map(|()| (r.replicas.get(&req.group).copied().unwrap_or(0), r.load))
    };
    match (key(original), key(replacement)) {
        (Some(_), None) => true,
        (Some(o), Some(r)) => o < r,
        (None, _) => false,
    }
}

/// `robot` without one replica of `req` counted on it (the inverse of a
/// placement), for comparing a robot that holds the copy with one that
/// does not.
pub fn without_replica(req: &Request<'_>, robot: &RobotInfo) -> RobotInfo {
    let mut r = robot.clone();
    r.cpu_used -= req.cpu;
    r.memory_used -= req.memory;
    r.load = r.load.saturating_sub(req.tasks);
    if let Some(n) = r.replicas.get_mut(&req.group) {
        *n = n.saturating_sub(1);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn robot(name: &str, labels: &[(&str, &str)]) -> RobotInfo {
        RobotInfo {
            name: name.into(),
            online: true,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    fn req<'a>(group: &str, sel: Option<&'a RobotSelector>, ports: &[i64]) -> Request<'a> {
        Request {
            group: group.into(),
            selector: sel,
            constraints: &[],
            ports: ports.iter().copied().collect(),
            tasks: 1,
            cpu: 0,
            memory: 0,
        }
    }

    #[test]
    fn capacity_is_respected() {
        let mut small = robot("small", &[]);
        small.cpu_capacity = Some(1000);
        small.memory_capacity = Some(1 << 30);
        let mut robots = vec![small];
        let mut r = req("d/j/g", None, &[]);
        r.cpu = 400;
        r.memory = 1 << 20;
        let (placed, why) = place(&r, &mut robots, 3);
        assert_eq!(
            placed.iter().filter(|p| p.is_some()).count(),
            2,
            "two 400m replicas fit in one core"
        );
        assert_eq!(why.unwrap().reasons.get("have insufficient cpu"), Some(&1));
        let mut unknown = vec![robot("unknown", &[])];
        let (placed, why) = place(&r, &mut unknown, 3);
        assert!(
            why.is_none() && placed.iter().all(Option::is_some),
            "no reported capacity: no limit"
        );
    }

    #[test]
    fn selector_and_spread() {
        let sel = RobotSelector {
            match_labels: [("fleet".to_string(), "a".to_string())].into(),
            ..Default::default()
        };
        let mut robots = vec![
            robot("r1", &[("fleet", "a")]),
            robot("r2", &[("fleet", "b")]),
            robot("r3", &[("fleet", "a")]),
        ];
        let (placed, why) = place(&req("d/j/g", Some(&sel), &[]), &mut robots, 4);
        assert!(why.is_none());
        let names: Vec<_> = placed.into_iter().map(Option::unwrap).collect();
        assert_eq!(names, ["r1", "r3", "r1", "r3"], "spread over matching robots only");
    }

    #[test]
    fn ports_are_per_robot_resources() {
        let mut robots = vec![robot("r1", &[]), robot("r2", &[])];
        let (a, _) = place(&req("d/j/a", None, &[9091]), &mut robots, 1);
        let (b, _) = place(&req("d/j/b", None, &[9091, 9092]), &mut robots, 1);
        assert_ne!(a[0], b[0], "two groups with the same localPort never share a robot");
        let (c, why) = place(&req("d/k/c", None, &[9091]), &mut robots, 1);
        assert_eq!(c, vec![None]);
        let why = why.unwrap();
        assert_eq!(
            why.reasons.get("already use localPort 9091 for another group"),
            Some(&2)
        );
        assert!(
            why.to_string()
                .starts_with("0/2 robots are available: 2 already use localPort 9091"),
            "{why}"
        );
        // The same group's own replicas may share (they share one Envoy).
        let (d, _) = place(&req("d/j/a", None, &[9091]), &mut robots, 2);
        assert_eq!(d, vec![a[0].clone(), a[0].clone()]);
    }

    #[test]
    fn offline_and_constraints() {
        let mut r = robot("r1", &[("zone", "z1"), ("cores", "8")]);
        r.attrs.insert("kernel.name".into(), "linux".into());
        let c = |l: &str, op: &str, rt: &str| Constraint {
            l_target: l.into(),
            operand: op.into(),
            r_target: rt.into(),
        };
        assert!(check_constraint(&c("${meta.zone}", "=", "z1"), &r).is_ok());
        assert!(check_constraint(&c("${meta.zone}", "!=", "z1"), &r).is_err());
        assert!(check_constraint(&c("${attr.kernel.name}", "=", "linux"), &r).is_ok());
        assert!(check_constraint(&c("${meta.cores}", ">=", "4"), &r).is_ok());
        assert!(check_constraint(&c("${meta.cores}", "<", "4"), &r).is_err());
        assert!(check_constraint(&c("${meta.missing}", "=", "x"), &r).is_err());
        assert!(check_constraint(&c("1.10.2", "version", ">= 1.9, < 2.0"), &r).is_ok());
        assert!(check_constraint(&c("a,b,c", "set_contains", "a,c"), &r).is_ok());
        r.online = false;
        let (p, why) = place(&req("d/j/g", None, &[]), &mut [r], 1);
        assert_eq!(p, vec![None]);
        assert_eq!(why.unwrap().reasons.get("are not Online"), Some(&1));
    }

    #[test]
    fn system_groups_run_once_on_every_matching_robot() {
        let sel = RobotSelector {
            match_labels: [("fleet".to_string(), "a".to_string())].into(),
            ..Default::default()
        };
        let mut offline = robot("r4", &[("fleet", "a")]);
        offline.online = false;
        let mut lost = robot("r5", &[("fleet", "a")]);
        lost.online = false;
        let mut busy = robot("r6", &[("fleet", "a")]);
        busy.ports.insert(9000, "d/other-g".into());
        let mut robots = vec![
            robot("r3", &[("fleet", "a")]),
            robot("r1", &[("fleet", "a")]),
            robot("r2", &[("fleet", "b")]),
            offline,
            lost,
            busy,
            robot("r7", &[("fleet", "b")]),
        ];
        let placed: BTreeSet<String> = ["r1", "r5", "r7", "gone"].iter().map(|s| s.to_string()).collect();
        let plan = place_system(&req("d/j-g", Some(&sel), &[9000]), &mut robots, &placed);
        assert_eq!(plan.keep, ["r1", "r5"], "an Offline robot keeps its replica");
        assert_eq!(plan.add, ["r3"], "an Offline robot without one waits");
        assert_eq!(plan.remove, ["gone", "r7"], "deleted or no longer matching");
        assert_eq!(
            plan.unfit,
            [(
                "r6".to_string(),
                "already uses localPort 9000 for another group".to_string()
            )]
        );
        assert_eq!(
            robots[0].ports.get(&9000).map(String::as_str),
            Some("d/j-g"),
            "r3 now holds the port"
        );
        // Placing again with the result changes nothing.
        let placed: BTreeSet<String> = plan.keep.iter().chain(&plan.add).cloned().collect();
        let again = place_system(&req("d/j-g", Some(&sel), &[9000]), &mut robots, &placed);
        assert_eq!(again.keep, ["r1", "r3", "r5"]);
        assert!(again.add.is_empty() && again.remove.is_empty());
    }

    #[test]
    fn reasons_read_well_for_one_robot() {
        assert_eq!(singular("are not Online"), "is not Online");
        assert_eq!(singular("have insufficient cpu"), "has insufficient cpu");
        assert_eq!(singular("do not match robotSelector"), "does not match robotSelector");
        assert_eq!(
            singular("do not satisfy constraint a = b"),
            "does not satisfy constraint a = b"
        );
    }

    #[test]
    fn best_score_prefers_the_better_fit_and_keeps_the_replacement_on_ties() {
        let r = req("d/j/g", None, &[]);
        let (a, b) = (robot("a", &[]), robot("b", &[]));
        assert!(!original_scores_better(&r, &a, &b), "a tie keeps the replacement");
        let mut busy = robot("b", &[]);
        busy.load = 5;
        assert!(original_scores_better(&r, &a, &busy), "the less loaded robot wins");
        assert!(!original_scores_better(&r, &busy, &a));
        let mut crowded = robot("b", &[]);
        crowded.replicas.insert("d/j/g".into(), 2);
        assert!(
            original_scores_better(&r, &busy, &crowded),
            "spreading the group counts before load"
        );
        let mut gone = robot("b", &[]);
        gone.online = false;
        assert!(
            original_scores_better(&r, &busy, &gone),
            "a robot that no longer fits loses"
        );
        assert!(!original_scores_better(&r, &gone, &busy));
        // The replacement's own copy is not held against it.
        let mut holder = robot("b", &[]);
        holder.load = 1;
        holder.replicas.insert("d/j/g".into(), 1);
        assert!(!original_scores_better(&r, &a, &without_replica(&r, &holder)));
    }
}
