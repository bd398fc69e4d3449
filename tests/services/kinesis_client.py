#!/usr/bin/env python3
"""boto3 as an independent Kinesis client for the tests: kinesis_client.py ENDPOINT COMMAND ARGS...

  create STREAM SHARDS        create a stream and wait until it is ACTIVE
  put STREAM                  PutRecords of stdin's lines `key<TAB>data` (in calls of 500)
  put-agg STREAM PER          the same lines as KPL aggregates of PER user records (aws-kinesis-agg)
  put-raw STREAM KEY          stdin's bytes as one record
  read STREAM                 every record of every shard from TRIM_HORIZON, one JSON object a line
  split STREAM SHARD          split a shard at the middle of its hash range
  merge STREAM SHARD ADJACENT merge two adjacent shards
  shards STREAM               the shards as JSON
"""
import json
import sys
import time

import boto3


def client(endpoint):
    return boto3.client(
        "kinesis",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def wait_active(k, stream):
    for _ in range(600):
        s = k.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
        if s["StreamStatus"] == "ACTIVE":
            return
        time.sleep(0.05)
    raise SystemExit(f"stream {stream} did not become ACTIVE")


def shards(k, stream):
    out, token = [], None
    while True:
        page = k.list_shards(NextToken=token) if token else k.list_shards(StreamName=stream)
        out += page["Shards"]
        token = page.get("NextToken")
        if not token:
            return out


def lines():
    for line in sys.stdin.read().splitlines():
        key, _, data = line.partition("\t")
        yield key, data


def put(k, stream, entries):
    for i in range(0, len(entries), 500):
        pending = entries[i : i + 500]
        while pending:
            r = k.put_records(StreamName=stream, Records=pending)
            pending = [e for e, res in zip(pending, r["Records"]) if "ErrorCode" in res]
            if pending:
                time.sleep(0.2)


def main():
    endpoint, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    k = client(endpoint)
    if cmd == "create":
        k.create_stream(StreamName=args[0], ShardCount=int(args[1]))
        wait_active(k, args[0])
    elif cmd == "put":
        put(k, args[0], [{"PartitionKey": key, "Data": data.encode()} for key, data in lines()])
    elif cmd == "put-agg":
        from aws_kinesis_agg.aggregator import RecordAggregator

        per, entries = int(args[1]), []
        agg = RecordAggregator()
        for key, data in lines():
            agg.add_user_record(key, data.encode())
            if agg.get_num_user_records() == per:
                pk, _, blob = agg.clear_and_get().get_contents()
                entries.append({"PartitionKey": pk, "Data": blob})
        if agg.get_num_user_records():
            pk, _, blob = agg.clear_and_get().get_contents()
            entries.append({"PartitionKey": pk, "Data": blob})
        put(k, args[0], entries)
    elif cmd == "put-raw":
        k.put_record(StreamName=args[0], PartitionKey=args[1], Data=sys.stdin.buffer.read())
    elif cmd == "read":
        for s in shards(k, args[0]):
            it = k.get_shard_iterator(
                StreamName=args[0], ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while it:
                r = k.get_records(ShardIterator=it, Limit=10000)
                for rec in r["Records"]:
                    print(json.dumps({
                        "shard": s["ShardId"],
                        "seq": rec["SequenceNumber"],
                        "key": rec["PartitionKey"],
                        "data": rec["Data"].decode("utf-8", "replace"),
                    }))
                if not r["Records"] and r.get("MillisBehindLatest", 0) == 0:
                    break
                it = r.get("NextShardIterator")
    elif cmd == "split":
        s = next(s for s in shards(k, args[0]) if s["ShardId"] == args[1])
        lo, hi = int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"])
        k.split_shard(StreamName=args[0], ShardToSplit=args[1], NewStartingHashKey=str((lo + hi) // 2 + 1))
        wait_active(k, args[0])
    elif cmd == "merge":
        k.merge_shards(StreamName=args[0], ShardToMerge=args[1], AdjacentShardToMerge=args[2])
        wait_active(k, args[0])
    elif cmd == "shards":
        print(json.dumps(shards(k, args[0])))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
