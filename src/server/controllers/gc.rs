//! Garbage collection through ownerReferences (Job → TaskGroups → Tasks,
//! Job → Rollouts):
//! an object whose every owner is gone is deleted, which in turn orphans its
//! own dependents for the next pass. Level-triggered: it also cleans up
//! after a restart or a missed event.

use super::{Ctx, Next, Work};
use crate::server::object;
use crate::server::registry::DeleteOptions;
use crate::server::resources;
use crate::server::status::Status;

pub async fn collect(ctx: &Ctx) -> Result<Next, Status> {
    let mut deleted = 0;
    for plural in ["taskgroups", "tasks", "rollouts"] {
        let Some(res) = resources::by_plural(plural) else {
            continue;
        };
        for v in ctx.cache().list(plural, None) {
            let owners = object::owner_uids(&v);
            if owners.is_empty() || owners.iter().any(|u| ctx.cache().uid_exists(u)) {
                continue;
            }
            match ctx
                .registry
                .delete(res, object::namespace(&v), object::name(&v), &DeleteOptions::default())
                .await
            {
                Ok(last) => {
                    ctx.deleted(plural, &last);
                    deleted += 1;
                }
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    if deleted > 0 {
        // Tasks orphaned by the TaskGroups just deleted.
        ctx.hub.queue.add(Work::Gc);
    }
    Ok(Next::Done)
}
