#!/usr/bin/env python3
"""The `aws s3 cp` reference for benches/remote.rs: boto3's managed transfers (s3transfer, the engine
the AWS CLI runs: 8 MiB parts, 10 concurrent requests) against the same S3 endpoint, timing one
download of an existing object and one upload of a local file.

    python benches/reference/s3_copy.py ENDPOINT BUCKET KEY LOCAL_FILE   # one JSON line
"""

import json
import os
import sys
import tempfile
import time

import boto3

endpoint, bucket, key, local = sys.argv[1:5]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
    aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    region_name="us-east-1",
)
with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    s3.download_file(bucket, key, os.path.join(tmp, "down.bin"))
    download = time.perf_counter() - start
start = time.perf_counter()
s3.upload_file(local, bucket, "reference/up.bin")
upload = time.perf_counter() - start
print(json.dumps({"download_s": download, "upload_s": upload, "bytes": os.path.getsize(local)}))
