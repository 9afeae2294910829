"""A real S3 API for the tests: moto's server on 127.0.0.1, on a free port, in its own process
(`python -m moto.server`), and the environment that points etl.py at it (AWS_ENDPOINT_URL and
throwaway credentials). Uploads go through boto3, the way a user's tools put objects there."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
from conftest import free_ports

# Credentials moto accepts, unlike a real store; the secret is distinctive, so that a test can
# tell it never reaches the output.
ACCESS_KEY = "AKIAS3TESTSPARKIFY01"
SECRET_KEY = "s3cr3t-sparkify-test-never-printed"


class S3Server:
    """moto in server mode. start() again after stop() serves on the same port, empty (moto
    keeps its buckets in memory). enforce_auth: every request must carry credentials that moto's
    IAM knows, which none do: each is refused as a real store refuses bad credentials."""

    def __init__(self, enforce_auth: bool = False):
        (self.port,) = free_ports(1)
        self.enforce_auth = enforce_auth
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What etl.py needs to reach this server, as a user of an S3-compatible store sets it.
        One attempt per request: a test of a server gone need not wait out botocore's retries."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_MAX_ATTEMPTS": "1",
        }

    def start(self) -> S3Server:
        """moto started, and answering: killed again if it does not start (or the test is
        interrupted meanwhile), so that no server outlives its test."""
        env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if self.enforce_auth else {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            self.wait_until_it_answers()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_until_it_answers(self) -> None:
        """Its port takes connections while its process runs (a process of another that took the
        port meanwhile would leave moto to exit)."""
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if self.process.poll() is None:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def with_bucket(self, bucket: str):
        """A client, the bucket made if need be."""
        s3 = self.client()
        if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
            s3.create_bucket(Bucket=bucket)
        return s3

    def upload(self, folder: Path, bucket: str, prefix: str, acl: str = "private") -> str:
        """Every file under folder's song_data/ and log_data/ put under s3://bucket/prefix/ (the
        bucket made if need be), with the canned ACL given ("public-read": anyone may read it);
        the URL of the prefix."""
        s3 = self.with_bucket(bucket)
        for top in ("song_data", "log_data"):
            for path in sorted((folder / top).rglob("*")):
                if path.is_file():
                    key = f"{prefix}/{path.relative_to(folder).as_posix()}"
                    s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), ACL=acl)
        return f"s3://{bucket}/{prefix}"
