"""A backend on an S3-compatible object store (AWS S3, SeaweedFS, MinIO, ...), with boto3.

Names map to keys under `prefix`; loads of a part of an object are ranged GETs. The
bucket is created the first time a save finds it missing, so building the backend never
talks to the network and a daemon starts while the object store is down.

Every failure except a missing key becomes `BackendUnavailable` carrying the S3 error
code or the connection error: `retry.RetryingBackend` decides what to do with it. boto3's
own retries are kept to one extra attempt so that an outage is noticed quickly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
import botocore.exceptions
from botocore.config import Config

from twinvault.repository.chunkstore.backend import BackendUnavailable, check_name

T = TypeVar("T")

_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_NO_BUCKET = "NoSuchBucket"


class S3Backend:
    def __init__(
        self,
        endpoint_url: str,
        bucket: str,
        prefix: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.name = f"s3://{bucket}/{self.prefix}"
        session = boto3.session.Session()  # sessions are not thread-safe; the client is
        self._s3: Any = session.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"total_max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                raise FileNotFoundError(f"{self.name}: {what}: no such object") from exc
            if code == _NO_BUCKET:
                raise _NoBucket(f"{self.name}: bucket {self.bucket} does not exist") from exc
            raise BackendUnavailable(f"{what}: {code or exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:  # connection refused, timeouts, ...
            raise BackendUnavailable(f"{what}: {exc}") from exc

    def save(self, name: str, data: bytes) -> None:
        key = self._key(name)

        def put() -> None:
            self._call(f"put {name}", lambda: self._s3.put_object(Bucket=self.bucket, Key=key, Body=data))

        try:
            put()
        except _NoBucket:
            self._create_bucket()
            put()

    def _create_bucket(self) -> None:
        try:
            self._call("create bucket", lambda: self._s3.create_bucket(Bucket=self.bucket))
        except BackendUnavailable as exc:
            # Another writer may have created it a moment ago.
            if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                raise

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self._key(name)
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if length is not None:
            if length <= 0:
                return b""
            args["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            args["Range"] = f"bytes={offset}-"

        def get() -> bytes:
            try:
                body: bytes = self._s3.get_object(**args)["Body"].read()
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""  # a range wholly past the end: cut short, like a file read
                raise
            return body

        try:
            return self._call(f"get {name}", get)
        except _NoBucket as exc:
            raise FileNotFoundError(str(exc)) from exc

    def list(self, prefix: str) -> list[tuple[str, int]]:
        full = self.prefix + prefix
        out: list[tuple[str, int]] = []

        def walk() -> None:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    out.append((str(item["Key"])[len(self.prefix) :], int(item["Size"])))

        try:
            self._call(f"list {prefix}", walk)
        except _NoBucket:
            return []
        return out

    def remove(self, name: str) -> None:
        key = self._key(name)
        with contextlib.suppress(FileNotFoundError):  # also a missing bucket
            self._call(f"delete {name}", lambda: self._s3.delete_object(Bucket=self.bucket, Key=key))

    def exists(self, name: str) -> bool:
        key = self._key(name)
        try:
            self._call(f"head {name}", lambda: self._s3.head_object(Bucket=self.bucket, Key=key))
        except (_NoBucket, FileNotFoundError):
            return False
        return True


class _NoBucket(FileNotFoundError):
    """The bucket itself is missing (created on the first save)."""
