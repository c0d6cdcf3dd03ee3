#!/usr/bin/env python3
"""The Python shipper the log benchmark compares node-agent with: what a user would write with boto3.

Reads a node-agent log file (each line `YYYY-MM-DDTHH:MM:SS.mmmZ message`) and ships it with
put_log_events, batching correctly: at most 10,000 events and 1,048,576 bytes counting 26 bytes per
event, chronological, spanning less than 24 hours; throttling is retried. Prints one JSON line with its
own CPU seconds, peak RSS and wall time.

    py_shipper.py FILE GROUP STREAM   (endpoint and region from AWS_ENDPOINT_URL / AWS_REGION)
"""

import datetime
import json
import resource
import sys
import time

START = time.time()

import boto3  # noqa: E402  (its import time is part of what a user pays)
import botocore.exceptions  # noqa: E402

MAX_BYTES = 1_048_576
MAX_EVENTS = 10_000
DAY_MS = 86_400_000


def main(path, group, stream):
    client = boto3.client("logs")
    for call, args in (
        (client.create_log_group, {"logGroupName": group}),
        (client.create_log_stream, {"logGroupName": group, "logStreamName": stream}),
    ):
        try:
            call(**args)
        except client.exceptions.ResourceAlreadyExistsException:
            pass

    calls = events = 0
    batch, size = [], 0

    def flush():
        nonlocal calls, events, batch, size
        delay = 0.2
        while True:
            try:
                client.put_log_events(logGroupName=group, logStreamName=stream, logEvents=batch)
                break
            except botocore.exceptions.ClientError as e:
                if e.response["Error"]["Code"] not in ("ThrottlingException", "ServiceUnavailableException"):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 10)
        calls += 1
        events += len(batch)
        batch, size = [], 0

    with open(path, "rb") as f:
        for raw in f:
            line = raw.rstrip(b"\n")
            try:
                ts = int(datetime.datetime.fromisoformat(line[:24].decode()).timestamp() * 1000)
                body = line[25:]
            except ValueError:
                ts, body = int(time.time() * 1000), line
            if not body:
                continue
            n = len(body) + 26
            if batch and (
                len(batch) == MAX_EVENTS
                or size + n > MAX_BYTES
                or ts < batch[-1]["timestamp"]
                or ts - batch[0]["timestamp"] >= DAY_MS
            ):
                flush()
            batch.append({"timestamp": ts, "message": body.decode("utf-8", "replace")})
            size += n
    if batch:
        flush()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_kib": usage.ru_maxrss,
        "wall_s": time.time() - START,
        "events": events,
        "calls": calls,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:4])
