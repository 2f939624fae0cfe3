//! The deployment's keys, node by node. SCAN walks one node's keyspace: on a single Redis that is
//! all of it, on a cluster each primary is walked in turn (fred would send a pattern without a hash
//! tag to one node only). Used by reconcile's key pass, rebuild's clear and the tests' cleanup.

use fred::prelude::*;
use fred::types::config::Server;
use futures::stream::{self, StreamExt, TryStreamExt};

/// The nodes to scan, in a stable order (by address): `[None]` for a single Redis (the client's own
/// connection), every primary of a cluster otherwise.
pub fn scan_nodes(client: &Client) -> Vec<Option<Server>> {
    if !client.is_clustered() {
        return vec![None];
    }
    let mut primaries = client
        .cached_cluster_state()
        .map(|state| state.unique_primary_nodes())
        .unwrap_or_default();
    primaries.sort_by_key(|s| s.to_string());
    primaries.into_iter().map(Some).collect()
}

/// One SCAN page on `node` (None: a single Redis): (next cursor, keys).
pub async fn scan_page(
    client: &Client,
    node: Option<&Server>,
    cursor: u64,
    pattern: &str,
    count: u32,
) -> Result<(u64, Vec<String>), fred::error::Error> {
    let (next, page): (String, Vec<String>) = match node {
        Some(node) => {
            client
                .with_cluster_node(node.clone())
                .scan_page(cursor.to_string(), pattern, Some(count), None)
                .await?
        }
        None => {
            client
                .scan_page(cursor.to_string(), pattern, Some(count), None)
                .await?
        }
    };
    let next = next.parse().map_err(|_| {
        fred::error::Error::new(fred::error::ErrorKind::Parse, "SCAN cursor is not a number")
    })?;
    Ok((next, page))
}

/// Every key matching `pattern`, on every node.
pub async fn all_keys(client: &Client, pattern: &str) -> Result<Vec<String>, fred::error::Error> {
    let mut keys = Vec::new();
    for node in scan_nodes(client) {
        let mut cursor = 0;
        loop {
            let (next, page) = scan_page(client, node.as_ref(), cursor, pattern, 1000).await?;
            keys.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(keys)
}

/// Deletes every key matching `pattern`, on every node: one UNLINK per key (keys of several slots
/// cannot share a command on a cluster), a few dozen at a time.
pub async fn unlink_all(client: &Client, pattern: &str) -> Result<usize, fred::error::Error> {
    let keys = all_keys(client, pattern).await?;
    let count = keys.len();
    stream::iter(keys)
        .map(|key| async move { client.unlink::<i64, _>(key).await })
        .buffer_unordered(64)
        .try_collect::<Vec<i64>>()
        .await?;
    Ok(count)
}
