//! The stream's shards and their lineage, from ListShards: a shard made by a split or merge names
//! its parents, and is read only once every parent still listed was read to its end, so the
//! records of one partition key keep their order across resharding (as KCL does).

use crate::client::Trouble;
use crate::ranges::Next;
use aws_sdk_kinesis::Client;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub parents: Vec<String>,
    /// Closed by a split or merge: it has an ending sequence number.
    pub closed: bool,
}

/// Every shard of `stream`, open and closed (those still within retention).
pub async fn list(client: &Client, stream: &str) -> Result<BTreeMap<String, ShardInfo>, Trouble> {
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let page = req.send().await.map_err(|e| Trouble::of(&e))?;
        for s in page.shards.unwrap_or_default() {
            let parents = [s.parent_shard_id, s.adjacent_parent_shard_id]
                .into_iter()
                .flatten()
                .collect();
            let closed = s
                .sequence_number_range
                .is_some_and(|r| r.ending_sequence_number.is_some());
            out.insert(s.shard_id, ShardInfo { parents, closed });
        }
        token = page.next_token;
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// The shards that may be read now: not finished, and every parent still listed finished.
pub fn eligible<'a>(
    listing: &'a BTreeMap<String, ShardInfo>,
    done: &BTreeMap<String, Next>,
) -> Vec<&'a str> {
    let finished = |id: &str| matches!(done.get(id), Some(Next::Done));
    listing
        .iter()
        .filter(|(id, info)| {
            !finished(id)
                && info
                    .parents
                    .iter()
                    .all(|p| finished(p) || !listing.contains_key(p))
        })
        .map(|(id, _)| id.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranges::Pos;

    #[test]
    fn children_wait_for_every_listed_parent() {
        let info = |parents: &[&str], closed| ShardInfo {
            parents: parents.iter().map(|s| s.to_string()).collect(),
            closed,
        };
        let listing = BTreeMap::from([
            ("a".to_string(), info(&[], true)),
            ("b".to_string(), info(&[], true)),
            ("merged".to_string(), info(&["a", "b"], false)),
            ("orphan".to_string(), info(&["expired"], false)),
        ]);
        let mut done = BTreeMap::new();
        assert_eq!(eligible(&listing, &done), vec!["a", "b", "orphan"]);
        done.insert("a".to_string(), Next::Done);
        done.insert("b".to_string(), Next::After(Pos::new("1", 0)));
        assert_eq!(eligible(&listing, &done), vec!["b", "orphan"]);
        done.insert("b".to_string(), Next::Done);
        assert_eq!(eligible(&listing, &done), vec!["merged", "orphan"]);
    }
}
