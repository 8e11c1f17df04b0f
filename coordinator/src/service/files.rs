//! Guest files outside the Raft log: the CLI uploads each file to the leader
//! (`PutFile`), which keeps it in its file store and copies it to every other
//! coordinator before it answers; the Raft state holds only hashes and sizes.
//! An agent fetches a file by hash (`GetFile`) from the coordinator it is
//! connected to, which takes it from another coordinator if it lacks a copy.
//!
//! Every coordinator also fetches, in the background, each file its replica
//! of the state names and its store lacks ([`keep_copies`]): one that joined
//! after the upload (it caught up from a snapshot or the log) or was down
//! during it. The files then outlive the members that took them: a cluster
//! whose coordinators are replaced one by one still serves every lab.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use labspan_proto::files::{FileStore, FileStoreError};
use labspan_proto::lab::{FileRef, LabBundle, MAX_FILE_SIZE};
use labspan_proto::msg::{ErrorKind, Reply, Request};

use super::{error, Inner};

fn store_error(e: FileStoreError) -> Reply {
    match e {
        FileStoreError::BadHash(_) => error(ErrorKind::Invalid, e.to_string()),
        other => error(
            ErrorKind::Internal,
            format!("the coordinator's file store: {other}"),
        ),
    }
}

/// Stores `contents` on a blocking thread (hash, write and fsync of up to
/// 15 MiB must not hold a runtime thread that Raft's heartbeats need);
/// gives the contents back for the copies to peers.
async fn put_blocking(store: &FileStore, contents: Vec<u8>) -> (Result<FileRef, Reply>, Vec<u8>) {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || (store.put(&contents), contents)).await {
        Ok((stored, contents)) => (stored.map_err(store_error), contents),
        Err(e) => (
            Err(error(
                ErrorKind::Internal,
                format!("storing a guest file: {e}"),
            )),
            Vec::new(),
        ),
    }
}

/// Reads (and checks) `sha256` on a blocking thread.
async fn get_blocking(store: &FileStore, sha256: &str) -> Result<Option<Vec<u8>>, FileStoreError> {
    let (store, sha) = (store.clone(), sha256.to_string());
    match tokio::task::spawn_blocking(move || store.get(&sha)).await {
        Ok(got) => got,
        Err(e) => Err(FileStoreError::Io {
            doing: "cannot read",
            path: sha256.into(),
            cause: std::io::Error::other(e.to_string()),
        }),
    }
}

fn too_large(size: usize) -> Option<Reply> {
    (size as u64 > MAX_FILE_SIZE).then(|| {
        error(
            ErrorKind::Invalid,
            format!(
                "a guest file of {size} bytes is over the limit of {} MiB for one guest file",
                MAX_FILE_SIZE / (1024 * 1024)
            ),
        )
    })
}

/// Leader: stores `contents` and copies it to every other coordinator; a
/// majority of the voters must hold it before it is acknowledged, so a
/// deploy that names it survives the loss of this leader.
pub(super) async fn put(inner: &Arc<Inner>, contents: Vec<u8>) -> Reply {
    if let Some(refused) = too_large(contents.len()) {
        return refused;
    }
    let (file, contents) = match put_blocking(&inner.files, contents).await {
        (Ok(f), contents) => (f, contents),
        (Err(refused), _) => return refused,
    };
    let membership = inner
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .clone();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let request = Request::StoreFile { contents };
    let copies = membership
        .nodes()
        .filter(|(id, _)| **id != inner.id)
        .map(|(id, member)| {
            let (request, sha256) = (&request, &file.sha256);
            async move {
                let stored = matches!(
                    inner.peer_request(&member.addr, request).await,
                    Ok(Reply::FileStored { .. })
                );
                if !stored {
                    tracing::warn!(peer = %member, sha256, "could not copy a guest file; it fetches it when asked");
                }
                (*id, stored)
            }
        });
    let results = futures::future::join_all(copies).await;
    let holders = 1 + results
        .iter()
        .filter(|(id, ok)| *ok && voters.contains(id))
        .count();
    let needed = voters.len() / 2 + 1;
    if holders < needed {
        return error(
            ErrorKind::Unavailable,
            format!(
                "guest file {} is on {holders} of {} coordinators, a majority ({needed}) is needed; is a majority running?",
                file.sha256,
                voters.len()
            ),
        );
    }
    Reply::FileStored {
        sha256: file.sha256,
    }
}

/// Any coordinator: keeps a copy the leader sends.
pub(super) async fn store(inner: &Inner, contents: Vec<u8>) -> Reply {
    if let Some(refused) = too_large(contents.len()) {
        return refused;
    }
    match put_blocking(&inner.files, contents).await.0 {
        Ok(file) => Reply::FileStored {
            sha256: file.sha256,
        },
        Err(refused) => refused,
    }
}

/// Any coordinator: the contents of `sha256`, from its store or, failing
/// that, from another coordinator (then kept here).
pub(super) async fn get(inner: &Arc<Inner>, sha256: &str, may_ask_peers: bool) -> Reply {
    match get_blocking(&inner.files, sha256).await {
        Ok(Some(contents)) => return Reply::File { contents },
        Ok(None) => {}
        Err(FileStoreError::Damaged { path, .. }) => {
            tracing::warn!(path = %path.display(), "removed a damaged guest file; fetching it again");
        }
        Err(e) => return store_error(e),
    }
    if may_ask_peers {
        let members: Vec<_> = inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != inner.id)
            .map(|(_, m)| m.clone())
            .collect();
        let request = Request::GetFile {
            sha256: sha256.to_string(),
        };
        for member in members {
            let Ok(Reply::File { contents }) = inner.peer_request(&member.addr, &request).await
            else {
                continue;
            };
            // `put` names the copy by its contents: a peer's wrong bytes
            // never stand in for this hash.
            match put_blocking(&inner.files, contents).await {
                (Ok(f), contents) if f.sha256 == sha256 => return Reply::File { contents },
                (Ok(_), _) => {
                    tracing::warn!(peer = %member, sha256, "a coordinator sent the wrong contents for a guest file")
                }
                (Err(refused), _) => return refused,
            }
        }
    }
    error(
        ErrorKind::NotFound,
        format!("guest file {sha256} is on no coordinator; run `labspan up` again to upload it"),
    )
}

/// Leader, before a deploy: every file the lab names is stored here (or
/// fetched from another coordinator now).
pub(super) async fn check_uploaded(inner: &Arc<Inner>, bundle: &LabBundle) -> Result<(), Reply> {
    for (host_path, file) in &bundle.files {
        if inner.files.has(&file.sha256) {
            continue;
        }
        if let Reply::Error(e) = get(inner, &file.sha256, true).await {
            return Err(error(
                ErrorKind::Invalid,
                format!(
                    "lab {:?}: guest file {host_path:?} ({}) was not uploaded: {}",
                    bundle.lab.name, file.sha256, e.message
                ),
            ));
        }
    }
    Ok(())
}

/// How soon a coordinator tries again to fetch files no peer could give it.
const COPY_RETRY: Duration = Duration::from_secs(5);

/// Any coordinator, for as long as it runs: after each change of its
/// replica, fetches from the other coordinators every guest file the
/// stored labs name and its own store lacks; what no peer has yet is tried
/// again every [`COPY_RETRY`].
pub(super) async fn keep_copies(inner: Arc<Inner>) {
    let mut metrics = inner.raft.metrics();
    let mut complete_at = None;
    let mut complete = Complete::new();
    loop {
        let applied = metrics.borrow_and_update().last_applied;
        if applied != complete_at && fetch_missing(&inner, &mut complete).await == 0 {
            complete_at = applied;
        }
        let retry = applied != complete_at;
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(COPY_RETRY), if retry => {}
        }
    }
}

/// The labs whose every file an earlier pass found or fetched, with the
/// bundle it looked at: the replica decodes a lab's bundle once per
/// change of its spec, so an unchanged lab still has the very same one.
type Complete = BTreeMap<String, Arc<LabBundle>>;

/// How many guest files a coordinator fetches from its peers at once ...
const COPY_IN_FLIGHT: usize = 16;
/// ... and how many bytes of them at most (by the sizes the labs record):
/// sixteen router configurations go together, a 15 MiB file with little
/// beside it. This bounds the memory a catch-up copy holds.
const COPY_IN_FLIGHT_BYTES: u64 = 32 * 1024 * 1024;

/// Fetches the files the state names and the store lacks; returns how
/// many it could not get.
///
/// Only the labs whose bundle changed since `complete` last saw them are
/// looked at: with 500 labs of 20 files, listing and checking every file
/// after every applied entry cost each replica milliseconds of a runtime
/// thread per write, which every deploy waited for (docs/benchmarks.md,
/// "State at scale"). A file removed since (damaged) is fetched again by
/// the read that found it damaged.
///
/// The missing files are fetched [`COPY_IN_FLIGHT`] at a time (within
/// [`COPY_IN_FLIGHT_BYTES`]): a coordinator that joined a cluster holding
/// 10,400 files took a minute to copy them one request (and one fsync)
/// after another.
async fn fetch_missing(inner: &Arc<Inner>, complete: &mut Complete) -> usize {
    let changed: Vec<(String, Arc<LabBundle>)> = {
        let state = &inner.state.read().state;
        complete.retain(|lab, _| state.labs.contains_key(lab));
        (state.labs.keys())
            .filter_map(|lab| Some((lab, state.bundle(lab)?.ok()?)))
            .filter(|(lab, b)| complete.get(*lab).is_none_or(|seen| !Arc::ptr_eq(seen, b)))
            .map(|(lab, b)| (lab.clone(), b))
            .collect()
    };
    let wanted: BTreeMap<String, u64> = (changed.iter())
        .flat_map(|(_, bundle)| bundle.files.values())
        .filter(|file| !inner.files.has(&file.sha256))
        .map(|file| (file.sha256.clone(), file.size))
        .collect();
    let budget = Arc::new(tokio::sync::Semaphore::new(permits(COPY_IN_FLIGHT_BYTES)));
    let fetches = wanted.into_iter().map(|(sha256, size)| {
        let (inner, budget) = (inner.clone(), budget.clone());
        async move {
            let n = permits(size).clamp(1, permits(COPY_IN_FLIGHT_BYTES));
            // The semaphore is never closed: this waits for room only.
            let _in_flight = budget
                .acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
                .await;
            let got = fetch_if_missing(&inner, &sha256).await;
            (sha256, got)
        }
    });
    let mut fetching = futures::stream::iter(fetches).buffer_unordered(COPY_IN_FLIGHT);
    let mut lacking = BTreeSet::new();
    while let Some((sha256, got)) = fetching.next().await {
        if !got {
            lacking.insert(sha256);
        }
    }
    let mut lacks = 0;
    for (lab, bundle) in &changed {
        let lab_lacks = (bundle.files.values())
            .filter(|f| lacking.contains(&f.sha256))
            .count();
        if lab_lacks == 0 {
            complete.insert(lab.clone(), bundle.clone());
        } else {
            complete.remove(lab);
        }
        lacks += lab_lacks;
    }
    lacks
}

/// `bytes` in KiB, rounded up: the semaphore permits they take.
fn permits(bytes: u64) -> usize {
    usize::try_from(bytes.div_ceil(1024)).unwrap_or(usize::MAX)
}

/// Whether the store holds `sha256`, after fetching it from a peer if needed.
async fn fetch_if_missing(inner: &Arc<Inner>, sha256: &str) -> bool {
    if inner.files.has(sha256) {
        return true;
    }
    match get(inner, sha256, true).await {
        Reply::File { .. } => {
            tracing::info!(sha256, "copied a guest file from another coordinator");
            true
        }
        Reply::Error(e) => {
            tracing::warn!(sha256, error = %e.message, "cannot copy a guest file yet; trying again");
            false
        }
        _ => false,
    }
}
