//! The plan's images on this host: fetched where missing, then resolved
//! from the store for each VM.

use std::collections::{BTreeMap, BTreeSet};

use labspan_image::transfer::Progress;
use labspan_image::Image;
use labspan_proto::plan::HostPlan;

use super::{Agent, AgentError, Event};

impl Agent {
    /// Brings every image the plan resolved to this host's store, under its
    /// name, fetching what is missing; without a fetcher, does nothing.
    pub(super) async fn ensure_images(
        &self,
        plan: &HostPlan,
        events: &(dyn Fn(Event) + Sync),
    ) -> Result<(), AgentError> {
        let Some(fetcher) = self.fetcher.get() else {
            return Ok(());
        };
        let mut done = BTreeSet::new();
        for lab in &plan.labs {
            for image in &lab.images {
                if !done.insert((image.name.clone(), image.hash.clone())) {
                    continue;
                }
                let progress = |p: Progress| {
                    events(Event::Fetching {
                        lab: lab.lab.clone(),
                        image: p.image,
                        from: p.from,
                        bytes: p.bytes,
                        total: p.total,
                        mib_per_s: p.mib_per_s,
                    })
                };
                let retrying = |from: &str, why: &str| {
                    events(Event::FetchRetry {
                        lab: lab.lab.clone(),
                        image: image.name.clone(),
                        from: from.to_string(),
                        why: why.to_string(),
                    })
                };
                fetcher
                    .ensure(image, &progress, &retrying)
                    .await
                    .map_err(|e| AgentError::Fetch {
                        lab: lab.lab.clone(),
                        cause: Box::new(e),
                    })?;
            }
        }
        Ok(())
    }

    pub(super) fn resolve_images(
        &self,
        plan: &HostPlan,
    ) -> Result<BTreeMap<(String, String), Image>, AgentError> {
        let mut images = BTreeMap::new();
        for lab in &plan.labs {
            for vm in &lab.vms {
                let image = self
                    .images
                    .get(&vm.image)
                    .map_err(|cause| AgentError::Image {
                        lab: lab.lab.clone(),
                        vm: vm.name.clone(),
                        cause,
                    })?;
                images.insert((lab.lab.clone(), vm.name.clone()), image);
            }
        }
        Ok(images)
    }
}
