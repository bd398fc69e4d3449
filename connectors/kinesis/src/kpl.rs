//! KPL aggregated records: the Kinesis Producer Library packs many user records into one Kinesis
//! record as the magic bytes `F3 89 9A C2`, a protobuf `AggregatedRecord`, and the MD5 of that
//! protobuf. De-aggregated, each user record keeps the Kinesis record's sequence number and gets
//! its index as sub-sequence number, and its own partition key.

use md5::{Digest, Md5};
use prost::Message;

const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST: usize = 16;

#[derive(Clone, PartialEq, prost::Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<Record>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "vec", required, tag = "3")]
    data: Vec<u8>,
}

/// One user record of an aggregate.
#[derive(Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// Whether `data` is framed as an aggregate (it may still be a bad one).
pub fn is_aggregate(data: &[u8]) -> bool {
    data.len() >= MAGIC.len() + DIGEST && data.starts_with(&MAGIC)
}

/// The user records of an aggregate, in order; Err says why it is a bad one.
pub fn deaggregate(data: &[u8]) -> Result<Vec<UserRecord>, String> {
    let body = &data[MAGIC.len()..data.len() - DIGEST];
    let digest = &data[data.len() - DIGEST..];
    if Md5::digest(body).as_slice() != digest {
        return Err("a KPL aggregate whose MD5 checksum does not match its contents".into());
    }
    let agg = AggregatedRecord::decode(body)
        .map_err(|e| format!("a KPL aggregate whose protobuf does not decode: {e}"))?;
    agg.records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let key = agg
                .partition_key_table
                .get(r.partition_key_index as usize)
                .ok_or_else(|| {
                    format!(
                        "a KPL aggregate whose record {i} names partition key {} of {}",
                        r.partition_key_index,
                        agg.partition_key_table.len()
                    )
                })?;
            Ok(UserRecord {
                partition_key: key.clone(),
                data: r.data,
            })
        })
        .collect()
}

/// An aggregate of `records` (partition key, data), as the KPL writes it.
pub fn aggregate(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut keys: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (k, d) in records {
        let index = keys.iter().position(|x| x == k).unwrap_or_else(|| {
            keys.push(k.to_string());
            keys.len() - 1
        });
        out.push(Record {
            partition_key_index: index as u64,
            explicit_hash_key_index: None,
            data: d.to_vec(),
        });
    }
    let body = AggregatedRecord {
        partition_key_table: keys,
        explicit_hash_key_table: Vec::new(),
        records: out,
    }
    .encode_to_vec();
    let mut framed = MAGIC.to_vec();
    framed.extend_from_slice(&body);
    framed.extend_from_slice(&Md5::digest(&body));
    framed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_round_trip_and_bad_ones_are_named() {
        let agg = aggregate(&[("a", b"one"), ("b", b"two"), ("a", b"three")]);
        assert!(is_aggregate(&agg));
        let users = deaggregate(&agg).unwrap();
        assert_eq!(users.len(), 3);
        assert_eq!(users[2].partition_key, "a");
        assert_eq!(users[2].data, b"three");
        let mut bad = agg.clone();
        bad[6] ^= 1;
        assert!(deaggregate(&bad).unwrap_err().contains("MD5"));
        let mut garbage = MAGIC.to_vec();
        let body = [0xff, 0xff, 0xff];
        garbage.extend_from_slice(&body);
        garbage.extend_from_slice(&Md5::digest(body));
        assert!(deaggregate(&garbage).unwrap_err().contains("protobuf"));
        assert!(!is_aggregate(b"{\"plain\": 1}"));
    }
}
