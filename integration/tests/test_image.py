"""The container image's runtime stage, without a container engine (integration/deploy/rootfs.sh):
a Debian 12 minbase root filesystem with exactly the runtime packages the Dockerfile lists
and the librdkafka1 .deb; the relay binary run inside it with chroot as the image's numeric
user, on a read-only root (as the Helm chart runs it), against the test servers. Also the
configuration the Helm chart renders, run by the relay in that root filesystem.

Needs root (debootstrap, chroot, a private mount namespace): fails without, never skipped.
The root filesystem is cached in ~/.cache/outbox-relay/deploy (cold: about 2 minutes).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from harness import Relay, audit, enqueue
from harness.checks import assert_no_loss
from harness.servers import REPO_DIR

DEPLOY = REPO_DIR / "integration" / "deploy"
ROOTFS_SH = DEPLOY / "rootfs.sh"
CHART = REPO_DIR / "charts" / "outbox-relay"


def _run(*cmd, timeout=600, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def rootfs() -> Path:
    if os.geteuid() != 0:
        pytest.fail("the image test needs root (debootstrap, chroot, mount namespaces)")
    r = _run(ROOTFS_SH, "build", timeout=1200)
    assert r.returncode == 0, f"rootfs.sh build failed:\n{r.stderr}"
    return Path(r.stdout.strip())


# "rootfs": the runtime stage rebuilt with debootstrap + chroot (always). "image": an image
# built from the Dockerfile (integration/deploy/build-image.sh), run with buildah, when
# OUTBOX_IMAGE names it; the same tests then run from the real image too.
RUNNERS = ["rootfs"] + (["image"] if os.environ.get("OUTBOX_IMAGE") else [])


@pytest.fixture(params=RUNNERS)
def image_relay_bin(request, relay_bin, tmp_path) -> Path:
    """An executable that runs `outbox-relay ARGS` inside the image (the relay gets the
    signals sent to it), for harness.Relay(binary=...)."""
    w = tmp_path / "outbox-relay-in-image"
    if request.param == "rootfs":
        request.getfixturevalue("rootfs")
        w.write_text(f'#!/bin/sh\nexec "{ROOTFS_SH}" exec "{relay_bin}" "$@"\n')
    else:
        w.write_text(f'#!/bin/sh\nexec "{DEPLOY / "image-exec.sh"}" "$@"\n')
    w.chmod(0o755)
    return w


def _relay_pid(pid: int) -> int:
    """The outbox-relay process at or below pid (the image runner has buildah in between; a
    Go program's children hang under the thread that started them, so every task is read)."""
    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            if Path(f"/proc/{p}/comm").read_text().strip() == "outbox-relay":
                return p
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    raise AssertionError(f"no outbox-relay process under pid {pid}")


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def test_dockerfile_runtime_packages_resolve_every_library(relay_bin, rootfs):
    pkgs = _run(ROOTFS_SH, "packages").stdout.split()
    assert "libpq5" in pkgs and "ca-certificates" in pkgs, pkgs
    assert (rootfs / ".complete").read_text().split()[:-1] == pkgs, "root filesystem not built from the Dockerfile's list"
    r = _run(ROOTFS_SH, "ldd", relay_bin)
    assert r.returncode == 0, r.stdout + r.stderr
    libs = dict(re.findall(r"^\s*(\S+) => (.*?) \(", r.stdout, re.M))
    missing = [name for name, path in libs.items() if path == "not found"]
    assert not missing, f"libraries the Dockerfile's RUNTIME_PACKAGES do not provide: {missing}\n{r.stdout}"
    for needed in ("libpq.so.5", "libpqxx-6.4.so", "librdkafka.so.1", "libyaml-cpp.so.0.7", "libstdc++.so.6"):
        assert needed in libs, f"{needed} not loaded?\n{r.stdout}"
    # The check bites: the same binary in the bare minbase (debian:12-slim without the list)
    # misses libraries, so a package dropped from the list fails this test.
    base = _run(ROOTFS_SH, "base").stdout.strip()
    r = subprocess.run(["unshare", "--mount", "--", "sh", "-c",
                        'mount -t tmpfs tmpfs "$2/tmp" && : >"$2/tmp/relay" && mount --bind "$1" "$2/tmp/relay" '
                        '&& exec chroot "$2" ldd /tmp/relay', "-", str(relay_bin), base],
                       capture_output=True, text=True, timeout=60)
    assert "libpq.so.5 => not found" in r.stdout and "librdkafka.so.1 => not found" in r.stdout, r.stdout + r.stderr


def test_relay_in_image_rootfs_checks_and_publishes_as_non_root(ctx, image_relay_bin):
    uid = int(_run(ROOTFS_SH, "user").stdout.split(":")[0])
    assert uid != 0
    topic = ctx.topic()
    # As the chart passes it: the DSN from the environment into ${VAR} of the YAML.
    cfg = ctx.config({"postgres": {"dsn": "${OUTBOX_PG_DSN}"}})
    relay = Relay(cfg, ctx.workdir, binary=image_relay_bin, name="image", env={"OUTBOX_PG_DSN": ctx.dsn})
    ctx._relays.append(relay)
    r = relay.check()
    assert r.returncode == 0 and "all checks passed" in r.stdout, r.stdout + r.stderr

    relay.start()
    keys = [f"k{i}" for i in range(10)]
    with ctx.connect(autocommit=False) as c:
        for i in range(500):
            enqueue(c, topic, keys[i % 10], f"{i}".encode())
        c.commit()
    ctx.wait_all_published(500, 60, relay)
    pid = _relay_pid(relay.pid)
    assert _uid_of(pid) == uid, "the relay must run as the image's user"
    if "rootfs.sh" in image_relay_bin.read_text():  # as the chart runs it: readOnlyRootFilesystem
        root = [m.split() for m in Path(f"/proc/{pid}/mounts").read_text().splitlines() if m.split()[1] == "/"]
        assert root and root[-1][3].split(",")[0] == "ro", root
    records = ctx.kafka.consume_all(topic, 500, 60)
    assert_no_loss(audit(ctx.rows(topic), records), relay, allow_duplicates=False)
    assert relay.terminate() == 0, relay.log_tail()


# ------------------------------------------------------------------------- chart's config
def _helm() -> str:
    r = _run(REPO_DIR / "integration" / "env" / "helm.sh", timeout=1800)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _chart_configmaps(*set_args: str) -> dict[str, str]:
    """name -> config.yaml of the ConfigMaps `helm template` renders (the literal block under
    `config.yaml: |`, read by its indentation: no YAML library in the venv)."""
    r = _run(_helm(), "template", "rel", CHART, *[a for s in set_args for a in ("--set", s)])
    assert r.returncode == 0, r.stderr
    out = {}
    for doc in re.split(r"(?m)^---\s*$", r.stdout):
        if not re.search(r"(?m)^kind: ConfigMap$", doc):
            continue
        name = re.search(r"(?m)^  name: (\S+)$", doc).group(1)
        block = doc.split("  config.yaml: |\n", 1)[1]
        lines = []
        for line in block.splitlines():
            if line.strip() and not line.startswith("    "):
                break
            lines.append(line[4:])
        out[name] = "\n".join(lines).strip("\n") + "\n"
    assert out, r.stdout
    return out


def test_chart_config_is_what_the_relay_runs(ctx, image_relay_bin):
    """The relay configuration the chart renders, with the env vars the chart sets, passes
    `check` in the image (the relay refuses unknown keys: a chart default it does not know fails)."""
    cms = _chart_configmaps(f"kafka.bootstrapServers={ctx.kafka.bootstrap}",
                            "config.source.polling.interval_ms=100")
    assert set(cms) == {"rel-outbox-relay", "rel-outbox-relay-migrate"}, cms
    relay = Relay(cms["rel-outbox-relay"], ctx.workdir, binary=image_relay_bin, name="chart",
                  env={"OUTBOX_PG_DSN": ctx.dsn})
    ctx._relays.append(relay)
    r = relay.check()
    assert r.returncode == 0 and "all checks passed" in r.stdout, r.stdout + r.stderr


def test_chart_migration_config_migrates_with_the_privileged_dsn(ctx, image_relay_bin):
    """The migration hook's configuration migrates through postgres.admin_dsn
    (${OUTBOX_PG_ADMIN_DSN}) while the relay's own DSN would not even connect."""
    cms = _chart_configmaps(f"kafka.bootstrapServers={ctx.kafka.bootstrap}")
    db = ctx.db + "_chart"
    admin_dsn = ctx.pg.create_database(db)
    try:
        unusable = "host=127.0.0.1 port=1 dbname=nothing connect_timeout=2"  # migrate must not use it
        mig = Relay(cms["rel-outbox-relay-migrate"], ctx.workdir, binary=image_relay_bin, name="chart-migrate",
                    env={"OUTBOX_PG_DSN": unusable, "OUTBOX_PG_ADMIN_DSN": admin_dsn})
        r = mig.command("migrate")
        out = r.stdout + r.stderr
        if r.returncode != 0 and "postgres.admin_dsn: unknown key" in out:
            pytest.skip("this relay predates postgres.admin_dsn (ops branch): " + out.strip())
        assert r.returncode == 0, out
        with ctx.pg.connect(db, autocommit=True) as c:
            assert c.execute("SELECT to_regclass('outbox.events') IS NOT NULL").fetchone()[0]
    finally:
        ctx.pg.drop_database(db)
