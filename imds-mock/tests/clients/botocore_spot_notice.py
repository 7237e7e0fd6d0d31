"""Polls for an EC2 spot interruption notice with botocore's own IMDS fetcher (IMDSv2 token,
retries; the endpoint from AWS_EC2_METADATA_SERVICE_ENDPOINT), as a spot-aware agent would, and
prints the notice and when it appeared. Exits 1 if none appears within the deadline."""
import json
import os
import sys
import time

from botocore.utils import IMDSFetcher

DEADLINE = float(sys.argv[1]) if len(sys.argv) > 1 else 15.0
fetcher = IMDSFetcher(
    timeout=2,
    num_attempts=2,
    config={"ec2_metadata_service_endpoint": os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"]},
)
started = time.monotonic()
polls = 0
while time.monotonic() - started < DEADLINE:
    token = fetcher._fetch_metadata_token()
    polls += 1
    response = fetcher._get_request(
        "/latest/meta-data/spot/instance-action",
        retry_func=lambda response: False,
        token=token,
    )
    if response.status_code == 200:
        notice = json.loads(response.text)
        print(f"token={'yes' if token else 'no'}")
        print(f"action={notice['action']}")
        print(f"time={notice['time']}")
        print(f"after={time.monotonic() - started:.2f}")
        print(f"polls={polls}")
        sys.exit(0)
    if response.status_code != 404:
        sys.exit(f"unexpected status {response.status_code}: {response.text}")
    time.sleep(0.2)
sys.exit("no spot notice")
