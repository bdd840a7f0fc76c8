"""``store.process = "auto"``: the store writer runs as a child process only when the
sensor may use more than one CPU (affinity, cgroup CPU quota); on one CPU, a thread.

Real parts: CPU affinity set on real processes, a real ``egresswatch proxy`` pinned to
one CPU (and, where the machine has two, unpinned) with curl as its client, and the
store file it writes. The cgroup files are a folder tree laid out as the kernel's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import egresswatch_bin
from helpers.ports import free_port, wait_port
from helpers.proxyrun import count_flows, kill_all, post_chat, start_server, stop_when_recorded

from egresswatch import config as cfg
from egresswatch.errors import ConfigError
from egresswatch.runtime import Settings, store_in_child, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_cgroup_v2_quota_on_a_parent_caps_the_affinity(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "self.cgroup": "0::/system.slice/egw.service\n",
            "fs/system.slice/egw.service/cpu.max": "max 100000\n",
            "fs/system.slice/cpu.max": "50000 100000\n",
        },
    )
    got = usable_cpus(tmp_path / "fs", tmp_path / "self.cgroup")
    assert got == min(AFFINITY, 0.5)


def test_cgroup_v2_namespace_root_of_a_container(tmp_path: Path) -> None:
    """In a container with its own cgroup namespace the cgroup is "/" and its quota sits
    at the top of /sys/fs/cgroup (``docker run --cpus 1``)."""
    _tree(tmp_path, {"self.cgroup": "0::/\n", "fs/cpu.max": "100000 100000\n"})
    assert usable_cpus(tmp_path / "fs", tmp_path / "self.cgroup") == min(AFFINITY, 1.0)


def test_cgroup_v2_no_quota_leaves_the_affinity(tmp_path: Path) -> None:
    _tree(tmp_path, {"self.cgroup": "0::/a\n", "fs/a/cpu.max": "max 100000\n"})
    assert usable_cpus(tmp_path / "fs", tmp_path / "self.cgroup") == AFFINITY


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "self.cgroup": "4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n0::/\n",
            "fs/cpu,cpuacct/docker/x/cpu.cfs_quota_us": "150000\n",
            "fs/cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n",
            "fs/cpu,cpuacct/docker/cpu.cfs_quota_us": "-1\n",
            "fs/cpu,cpuacct/docker/cpu.cfs_period_us": "100000\n",
        },
    )
    assert usable_cpus(tmp_path / "fs", tmp_path / "self.cgroup") == min(AFFINITY, 1.5)


@pytest.mark.parametrize(
    "files",
    [
        {},  # no /proc/self/cgroup at all
        {"self.cgroup": "0::/a\n", "fs/a/cpu.max": "garbage\n"},
        {"self.cgroup": "0::/a\n", "fs/a/cpu.max": "100000 0\n"},
        # a line that is not a cgroup's is skipped, not read as the root's
        {"self.cgroup": "not a cgroup line\n", "fs/cpu.max": "50000 100000\n"},
    ],
)
def test_unreadable_or_odd_files_set_no_cap(tmp_path: Path, files: dict[str, str]) -> None:
    _tree(tmp_path, files)
    assert usable_cpus(tmp_path / "fs", tmp_path / "self.cgroup") == AFFINITY


def test_explicit_setting_wins_over_the_cpus() -> None:
    assert store_in_child(Settings(store_process=True)) is True
    assert store_in_child(Settings(store_process=False)) is False
    assert store_in_child(Settings()) is (usable_cpus() > 1)


def test_config_auto_true_false_and_a_clear_error(tmp_path: Path) -> None:
    assert cfg.load(None, env={}).settings().store_process is None
    assert cfg.load(None, env={}).values["store.process"] == "auto"
    for text, want in (('"auto"', None), ("true", True), ("false", False), ('"Auto"', None)):
        path = tmp_path / "egresswatch.toml"
        path.write_text(f"[store]\nprocess = {text}\n")
        conf = cfg.load(path, env={})
        assert conf.settings().store_process is want
        # what --print-config writes reads back the same
        again = tmp_path / "again.toml"
        again.write_text(conf.as_toml())
        assert cfg.load(again, env={}).settings().store_process is want
    env = {"EGRESSWATCH_STORE_PROCESS": "auto"}
    assert cfg.load(None, env=env).settings().store_process is None
    path.write_text('[store]\n\nprocess = "sometimes"\n')
    with pytest.raises(ConfigError) as info:
        cfg.load(path, env={})
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 3, "store.process")
    assert 'true, false or "auto"' in str(info.value)


CHOSEN = """
import sys
from prometheus_client import CollectorRegistry
from egresswatch.runtime import Settings, build_sinks
sinks = build_sinks(Settings(db_url=sys.argv[1], metrics_listen=None), CollectorRegistry())
print(type(sinks.writer).__name__, getattr(sinks.writer, "pid", None) is not None)
sinks.close()
"""


def _chosen(db: Path, cpus: set[int]) -> str:
    res = subprocess.run(
        [sys.executable, "-c", CHOSEN, f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_build_sinks_on_one_cpu_writes_from_a_thread(tmp_path: Path) -> None:
    one = {min(os.sched_getaffinity(0))}
    assert _chosen(tmp_path / "one.db", one) == "StoreWriter False"


@pytest.mark.skipif(AFFINITY < 2, reason="needs two CPUs for the child process to be chosen")
def test_build_sinks_on_two_cpus_writes_from_a_child(tmp_path: Path) -> None:
    assert _chosen(tmp_path / "two.db", os.sched_getaffinity(0)) == "RemoteWriter True"


def _store_children(pid: int) -> list[str]:
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                names.append(Path(f"/proc/{child}/comm").read_text().strip())
            except OSError:
                continue
    return [n for n in names if n == "egw-store"]


def _proxy_run(tmp_path: Path, cpus: set[int]) -> tuple[str, list[str], int]:
    """A real ``egresswatch proxy`` on these CPUs: its banner, store children, rows."""
    server_port, proxy_port = free_port(), free_port()
    server = start_server(server_port)
    db = tmp_path / "flows.db"
    proxy = subprocess.Popen(
        [
            egresswatch_bin(),
            "proxy",
            *("--listen", f"127.0.0.1:{proxy_port}", "--confdir", str(tmp_path / "conf")),
            *("--db", f"sqlite:///{db}", "--no-metrics", "--no-process-lookup"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    try:
        wait_port(proxy_port, proxy)
        children = _store_children(proxy.pid)
        post_chat(proxy_port, server_port, '{"messages": []}')
        err = stop_when_recorded(proxy, db)
    finally:
        kill_all(proxy, server)
    return err, children, count_flows(db)


@pytest.mark.slow
def test_real_proxy_on_one_cpu_has_no_store_process(tmp_path: Path) -> None:
    banner, children, rows = _proxy_run(tmp_path, {min(os.sched_getaffinity(0))})
    assert "Store: written by a thread of this process (it may use 1 CPU" in banner
    assert children == []
    assert rows == 1


@pytest.mark.slow
@pytest.mark.skipif(AFFINITY < 2, reason="needs two CPUs for the child process to be chosen")
def test_real_proxy_on_two_cpus_writes_from_egw_store(tmp_path: Path) -> None:
    banner, children, rows = _proxy_run(tmp_path, os.sched_getaffinity(0))
    assert "Store: written by a child process (egw-store, pid " in banner
    assert children == ["egw-store"]
    assert rows == 1


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ([], "written by a thread of this process (it may use 1 CPU"),
        (["--store-process"], "written by a child process (egw-store, pid "),
    ],
)
def test_run_check_on_one_cpu_says_where_the_sql_runs(
    tmp_path: Path, flags: list[str], want: str
) -> None:
    """``egresswatch run --check`` pinned to one CPU: auto picks the thread, a flag forces."""
    res = subprocess.run(
        [
            egresswatch_bin(),
            "run",
            "--check",
            *("--db", f"sqlite:///{tmp_path / 'flows.db'}", "--no-metrics"),
            *("--listen", f"127.0.0.1:{free_port()}", "--confdir", str(tmp_path / "conf")),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
    )
    assert res.returncode == 0, res.stderr
    database = [line for line in res.stderr.splitlines() if line.startswith("Database: ")]
    assert len(database) == 1 and want in database[0], res.stderr
