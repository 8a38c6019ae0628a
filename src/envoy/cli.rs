//! `render-envoy -f FILE [--group NAME] [--dir DIR]`: print one TaskGroup's
//! self-contained Envoy config (static listeners and clusters), ready for
//! `envoy --mode validate -c` or `envoy -c`.

use super::config::{self, Identity, Layout};
use super::{group_network, plan, GroupProxy, ProxyExtras};
use crate::api::{AnyObject, NetworkConfig};
use crate::cli::{check_sources, read_sources};
use lexopt::prelude::*;
use std::path::PathBuf;

const USAGE: &str = "usage: render-envoy -f FILE|- [--group NAME] [--dir DIR]
  Print the Envoy config of one TaskGroup (the first with a network, or NAME).
  --dir DIR   where the admin socket goes (default: $TMPDIR/k8s4r-envoy/<job>-<group>)";

/// One group's network found in the manifests.
#[derive(Debug)]
struct Found {
    job: String,
    group: String,
    network: Option<NetworkConfig>,
}

pub fn cmd_render(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut file = None;
    let mut group = None;
    let mut dir = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('f') | Long("filename") => file = Some(parser.value()?.string()?),
            Long("group") => group = Some(parser.value()?.string()?),
            Long("dir") => dir = Some(PathBuf::from(parser.value()?)),
            Short('h') | Long("help") => {
                println!("{USAGE}");
                return Ok(0);
            }
            other => return Err(other.unexpected()),
        }
    }
    let file = file.ok_or(USAGE)?;
    match render(&file, group.as_deref(), dir) {
        Ok(text) => {
            print!("{text}");
            Ok(0)
        }
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            Ok(1)
        }
    }
}

/// The config text, or every reason there is none.
fn render(file: &str, wanted: Option<&str>, dir: Option<PathBuf>) -> Result<String, Vec<String>> {
    let sources = read_sources(file).map_err(|e| vec![e])?;
    let mut groups = Vec::new();
    let mut errors = Vec::new();
    for c in check_sources(&sources) {
        match c.result {
            Ok(d) => groups.extend(groups_of(&d.object)),
            Err(errs) => errors.extend(errs.into_iter().map(|e| format!("{}: {e}", c.source))),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let found = match wanted {
        Some(name) => groups
            .into_iter()
            .find(|g| g.group == name)
            .ok_or_else(|| vec![format!("{file}: no task group named {name:?}")])?,
        None => groups
            .into_iter()
            .find(|g| g.network.is_some())
            .ok_or_else(|| vec![format!("{file}: no task group declares a network")])?,
    };
    let network = found
        .network
        .ok_or_else(|| vec![format!("task group {:?} declares no network", found.group)])?;
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir()
            .join("k8s4r-envoy")
            .join(format!("{}-{}", found.job, found.group))
    });
    let proxy = GroupProxy {
        job: found.job,
        group: found.group,
        network,
        dir,
        ..GroupProxy::default()
    };
    let extras = ProxyExtras::default();
    let plan =
        plan::plan(&proxy.network, &extras.inbound).map_err(|e| vec![format!("task group {:?}: {e}", proxy.group)])?;
    let layout = Layout::new(&proxy.dir);
    let id = Identity {
        node_id: proxy.node_id(),
        admin_socket: &layout.admin_socket,
    };
    config::render_static(&plan, &id, &extras.options).map_err(|e| vec![e.to_string()])
}

fn groups_of(object: &AnyObject) -> Vec<Found> {
    match object {
        AnyObject::Job(job) => job
            .spec
            .task_groups
            .iter()
            .map(|g| Found {
                job: job.name().to_string(),
                group: g.name.clone(),
                network: group_network(g.network.as_ref(), &g.tasks),
            })
            .collect(),
        AnyObject::TaskGroup(tg) => vec![Found {
            job: tg.spec.job_name.clone(),
            group: tg.spec.group_name.clone(),
            network: group_network(tg.spec.network.as_ref(), &tg.spec.tasks),
        }],
        AnyObject::Task(task) => vec![Found {
            job: task.spec.job_name.clone().unwrap_or_default(),
            group: task.spec.task_group_name.clone().unwrap_or_default(),
            network: task.spec.network.clone(),
        }],
        AnyObject::Robot(_) => Vec::new(),
        #[cfg(feature = "server")]
        AnyObject::AgentRelease(_) | AnyObject::Rollout(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK_GROUP: &str = r#"
apiVersion: robot.k8s4r.io/v1alpha1
kind: TaskGroup
metadata: {name: shop-web, namespace: default}
spec:
  jobName: shop
  groupName: web
  tasks:
    - name: app
      driver: exec
      config: {execConfig: {command: /bin/true}}
      network:
        upstreams:
          - {name: db, localPort: 15432, upstream: "db.internal:5432", tls: false}
"#;

    fn write(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.yaml");
        std::fs::write(&file, text).unwrap();
        (dir, file.to_string_lossy().into_owned())
    }

    #[test]
    fn renders_a_task_group_object_with_task_level_networks() {
        let (_d, file) = write(TASK_GROUP);
        let text = render(&file, None, Some("/run/g".into())).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["node"]["id"], "shop/web");
        assert_eq!(v["static_resources"]["listeners"][0]["name"], "out-db");
        assert_eq!(v["admin"]["address"]["pipe"]["path"], "/run/g/admin/admin.sock");
    }

    #[test]
    fn explains_what_is_wrong() {
        let (_d, file) = write(TASK_GROUP);
        assert_eq!(
            render(&file, Some("api"), None).unwrap_err(),
            [format!("{file}: no task group named \"api\"")]
        );
        let (_d, bad) = write(&TASK_GROUP.replace("15432", "70000"));
        let errs = render(&bad, None, None).unwrap_err();
        assert!(errs.iter().any(|e| e.contains("localPort")), "{errs:?}");
        let (_d, none) = write(&TASK_GROUP.replace("      network:\n", "      unused:\n"));
        let errs = render(&none, None, None).unwrap_err();
        assert!(
            errs.iter().any(|e| e.contains("no task group declares a network")),
            "{errs:?}"
        );
    }
}
