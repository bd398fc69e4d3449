"""An independent Kafka client for the kafka tests (confluent-kafka, its own librdkafka).

  kafka_client.py BOOTSTRAP create TOPIC PARTITIONS
  kafka_client.py BOOTSTRAP produce TOPIC [AVSC [SCHEMA_ID]]  < records, one JSON object per line:
        {"p": partition, "k": key, "v": value, "ts": ms, "h": {name: value}}  (all but v optional)
        with AVSC (an Avro schema file), "v" is an object written as one Avro datum by fastavro
        (after a zero byte and SCHEMA_ID when given: Confluent's framing), "raw" a hex value
        written as it is
  kafka_client.py BOOTSTRAP consume TOPIC COUNT [TIMEOUT_S [AVSC]]
        reads every partition from the start with isolation.level=read_committed until COUNT
        records (or TIMEOUT_S, default 60, without new ones), then on to each partition's end as
        it is then, so records past COUNT show; prints {"p","o","k","v"} per line;
        with AVSC, "v" is the value read as one plain Avro datum by fastavro
  kafka_client.py BOOTSTRAP consume-aio TOPIC COUNT [TIMEOUT_S]
        the same with aiokafka (pure Python: a second, independent Kafka implementation)
  kafka_client.py BOOTSTRAP committed GROUP TOPIC PARTITIONS
        prints the group's committed offset of each partition, one per line
"""
import io
import json
import struct
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def main():
    bootstrap, cmd, *args = sys.argv[1:]
    if cmd == "create":
        topic, parts = args[0], int(args[1])
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for _, f in admin.create_topics([NewTopic(topic, parts, 1)]).items():
            f.result(30)
    elif cmd == "delete":
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for _, f in admin.delete_topics([args[0]]).items():
            f.result(30)
        time.sleep(1)
    elif cmd == "produce":
        topic = args[0]
        avro = None
        if len(args) > 1:
            import fastavro
            avro = fastavro.parse_schema(json.load(open(args[1])))
            header = b"\0" + struct.pack(">I", int(args[2])) if len(args) > 2 else b""
        p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
        errors = []
        for line in sys.stdin:
            if not line.strip():
                continue
            r = json.loads(line)
            if "raw" in r:
                kw = {"value": bytes.fromhex(r["raw"])}
            elif avro is not None:
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, avro, r["v"])
                kw = {"value": header + buf.getvalue()}
            else:
                kw = {"value": r["v"].encode()}
            if "p" in r:
                kw["partition"] = r["p"]
            if "k" in r:
                kw["key"] = r["k"].encode()
            if "ts" in r:
                kw["timestamp"] = r["ts"]
            if "h" in r:
                kw["headers"] = list(r["h"].items())
            while True:
                try:
                    p.produce(topic, on_delivery=lambda e, m: e and errors.append(e), **kw)
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
        left = p.flush(60)
        if left or errors:
            sys.exit(f"produce failed: {left} unflushed, errors {errors[:3]}")
    elif cmd == "consume":
        topic, count = args[0], int(args[1])
        idle = float(args[2]) if len(args) > 2 else 60.0
        avro = None
        if len(args) > 3:
            import fastavro
            avro = fastavro.parse_schema(json.load(open(args[3])))
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "kafka-client-check",
                      "enable.auto.commit": False, "isolation.level": "read_committed"})
        md = c.list_topics(topic, timeout=30)
        parts = sorted(md.topics[topic].partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        got, last = [], time.time()

        def take(m):
            if avro is not None:
                v = fastavro.schemaless_reader(io.BytesIO(m.value()), avro, None)
            else:
                v = m.value().decode() if m.value() is not None else None
            got.append({"p": m.partition(), "o": m.offset(),
                        "k": m.key().decode() if m.key() is not None else None, "v": v})

        while len(got) < count and time.time() - last < idle:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            last = time.time()
            take(m)
        # Then on to the end of every partition as it is now, so records past COUNT (trailing
        # duplicates) show too; bounded by 3 s without a record.
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        last = time.time()
        while time.time() - last < 3:
            at = {tp.partition: tp.offset for tp in c.position([TopicPartition(topic, p) for p in parts])}
            if all(at.get(p, -1) >= ends[p] or ends[p] <= 0 for p in parts):
                break
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            last = time.time()
            take(m)
        c.close()
        for g in got:
            print(json.dumps(g))
    elif cmd == "consume-aio":
        import asyncio
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition as TP

        async def run():
            topic, count = args[0], int(args[1])
            idle = float(args[2]) if len(args) > 2 else 60.0
            c = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                                 enable_auto_commit=False, group_id=None)
            await c.start()
            try:
                parts = sorted(c.partitions_for_topic(topic) or [])
                if not parts:
                    await c._client.force_metadata_update()
                    parts = sorted(c.partitions_for_topic(topic) or [])
                tps = [TP(topic, p) for p in parts]
                c.assign(tps)
                await c.seek_to_beginning(*tps)
                got, last = [], time.time()
                while len(got) < count and time.time() - last < idle:
                    batch = await c.getmany(timeout_ms=500)
                    for _, msgs in batch.items():
                        for m in msgs:
                            last = time.time()
                            got.append({"p": m.partition, "o": m.offset,
                                        "k": m.key.decode() if m.key is not None else None,
                                        "v": m.value.decode() if m.value is not None else None})
                for g in got:
                    print(json.dumps(g))
            finally:
                await c.stop()

        asyncio.run(run())
    elif cmd == "committed":
        group, topic, parts = args[0], args[1], int(args[2])
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        for tp in c.committed([TopicPartition(topic, p) for p in range(parts)], timeout=30):
            print(tp.offset)
        c.close()
    else:
        sys.exit(f"unknown command {cmd}")


main()
