"""``rediss://`` URLs with a password: a real redis-server with TLS (a certificate made here)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from helpers import free_port
from redis_server import redis_server_available

from observable_tasks import TaskConfig, TaskManager, TaskStatus
from observable_tasks.backends.redis import RedisBackend

pytestmark = pytest.mark.skipif(
    not (redis_server_available() and shutil.which("openssl")), reason="needs redis-server, openssl"
)


async def double(value: int) -> int:
    return value * 2


@pytest.fixture(scope="module")
def tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("redis-tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    args = ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    args += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    args += ["--requirepass", "s3cret-pw", "--save", "", "--dir", str(folder)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://:s3cret-pw@127.0.0.1:{port}/0?ssl_cert_reqs=none"
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


async def test_tasks_run_over_tls_with_a_password(tls_url: str) -> None:
    backend = RedisBackend(tls_url, allow=[__name__])
    assert "s3cret-pw" not in backend.url
    manager = TaskManager(TaskConfig(), backend=backend)
    try:
        task = await manager.create_task(double, 21)
        done = await manager.wait_for_task(task.id, timeout=10)
        assert done.status is TaskStatus.COMPLETED
        assert done.result == 42
        seen = manager.get_task(task.id)  # the blocking read goes over TLS too
        assert seen is not None
        assert seen.result == 42
    finally:
        await manager.shutdown(timeout=1.0)


def test_a_plain_connection_to_the_tls_port_is_refused(tls_url: str) -> None:
    from observable_tasks.backends.redis import TaskBackendError

    plain = tls_url.replace("rediss://", "redis://").split("?")[0]
    with pytest.raises(TaskBackendError) as caught:
        RedisBackend(plain).check_connection()
    assert "s3cret-pw" not in str(caught.value)
