"""egresswatch.toml: defaults, file, environment and flags in that order; errors name the place."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from egresswatch import config as cfg
from egresswatch.cli import cli
from egresswatch.errors import ConfigError
from egresswatch.model import Mode

EXAMPLE = Path(cfg.__file__).parent / "data" / "egresswatch.example.toml"


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def write(tmp_path: Path, text: str, name: str = "egresswatch.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_embedded_defaults_need_no_file() -> None:
    conf = cfg.load(None, env={})
    s = conf.settings()
    assert conf["proxy.enabled"] is True
    assert conf["proxy.mode"] == "regular"
    assert conf["proxy.listen"] == ("127.0.0.1", 8080)
    assert s.metrics_listen == ("127.0.0.1", 9721)
    assert s.db_url is None and s.store is True  # the default SQLite file
    assert s.policy is None and s.mode is None  # the shipped policy, its own (monitor) mode
    assert s.catalogs == () and s.geoip_dir is None and s.country_db is None
    assert conf["sniffer.interfaces"] == ()
    assert set(conf.origins.values()) == {"default"}


def test_file_env_flag_precedence_and_origins(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[proxy]\nlisten = "127.0.0.1:18080"\nmode = "transparent"\n'
        '[metrics]\nlisten = "127.0.0.1:19000"\n[policy]\nmode = "monitor"\n',
    )
    env = {"EGRESSWATCH_METRICS_LISTEN": "127.0.0.1:19001", "EGRESSWATCH_POLICY_MODE": "enforce"}
    conf = cfg.load(path, env=env, flags={"policy.mode": Mode.MONITOR})
    assert conf["proxy.listen"] == ("127.0.0.1", 18080)
    assert conf.origins["proxy.listen"] == f"{path}:2"
    assert conf["proxy.mode"] == "transparent"
    assert conf["metrics.listen"] == ("127.0.0.1", 19001)
    assert conf.origins["metrics.listen"] == "env EGRESSWATCH_METRICS_LISTEN"
    assert conf["policy.mode"] is Mode.MONITOR
    assert conf.origins["policy.mode"] == "flag --mode"


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "policy.toml").write_text('mode = "monitor"\n')
    path = write(tmp_path / "etc", '[policy]\nfile = "policy.toml"\n[store]\nspill = "sp.jsonl"\n')
    conf = cfg.load(path, env={})
    assert conf["policy.file"] == tmp_path / "etc" / "policy.toml"
    assert conf["store.spill"] == tmp_path / "etc" / "sp.jsonl"


def test_short_env_names_kept_from_other_commands(tmp_path: Path) -> None:
    policy = write(tmp_path, 'mode = "monitor"\n', "p.toml")
    env = {
        "EGRESSWATCH_POLICY": str(policy),
        "EGRESSWATCH_DB": "sqlite:///x.db",
        "EGRESSWATCH_SENSOR": "gw-7",
        "EGRESSWATCH_GEOIP_DIR": str(tmp_path),
    }
    s = cfg.load(None, env=env).settings()
    assert (s.policy, s.db_url, s.sensor_name, s.geoip_dir) == (
        policy,
        "sqlite:///x.db",
        "gw-7",
        tmp_path,
    )


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ('[proxy]\nenabled = true\nlisten = "127.0.0.1:99999"\n', 3, "proxy.listen", "port"),
        ("[proxy]\nallow_quic = 3\n", 2, "proxy.allow_quic", "true or false"),
        ('\n[policy]\nmode = "block"\n', 3, "policy.mode", "'monitor' or 'enforce'"),
        ('[policy]\nfile = "missing.toml"\n', 2, "policy.file", "no such file"),
        ("[sniffer]\nidle_timeout = 0\n", 2, "sniffer.idle_timeout", "greater than 0"),
        ('[sniffer]\ninterfaces = ["eth0", "a b"]\n', 2, "sniffer.interfaces", "item 2"),
        ('[proxy]\nbody_limit = "lots"\n', 2, "proxy.body_limit", "not a size"),
        ('[proxy]\nmode = "local"\n', 2, "proxy.mode", "not supported"),
        ('[alerts]\nwebhook = "ftp://x"\n', 2, "alerts.webhook", "http"),
        ('[proxy]\nlisten = "::1:8080"\n', 2, "proxy.listen", "brackets"),
        ("[metrics]\nlistn = 1\n", 2, "metrics.listn", "did you mean 'listen'"),
        ('[run]\n\n[proxi]\nmode = "regular"\n', 3, "proxi", "did you mean 'proxy'"),
        ('proxy = "x"\n', 1, "proxy", "expected a table"),
    ],
)
def test_bad_values_name_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        cfg.load(path, env={})
    e = info.value
    assert (e.path, e.line, e.field) == (str(path), line, field)
    assert message in str(e)


def test_invalid_toml_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[proxy]\nlisten = "127.0.0.1:8080"\nmode = \n')
    with pytest.raises(ConfigError) as info:
        cfg.load(path, env={})
    assert info.value.line == 3 and "not valid TOML" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        cfg.load(tmp_path / "nope.toml", env={})


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        cfg.load(None, env={"EGRESSWATCH_PROXY_LISTEN": "nowhere"})
    assert "EGRESSWATCH_PROXY_LISTEN" in str(info.value)
    assert info.value.field == "proxy.listen"


def test_env_lists_and_booleans() -> None:
    conf = cfg.load(
        None,
        env={
            "EGRESSWATCH_SNIFFER_INTERFACES": "eth1, eth2",
            "EGRESSWATCH_PROXY_ALLOW_QUIC": "yes",
            "EGRESSWATCH_STORE_ENABLED": "0",
        },
    )
    assert conf["sniffer.interfaces"] == ("eth1", "eth2")
    assert conf["proxy.allow_quic"] is True
    assert conf.settings().store is False


def test_config_file_from_env_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert cfg.find_config(None, {cfg.CONFIG_ENV: str(path)}) == path
    assert cfg.find_config(tmp_path / "flag.toml", {cfg.CONFIG_ENV: str(path)}) == (
        tmp_path / "flag.toml"
    )
    assert cfg.find_config(None, {}) is None


def test_example_file_lists_every_setting_at_its_default() -> None:
    doc = tomllib.loads(EXAMPLE.read_text())
    keys = {f"{section}.{key}" for section, table in doc.items() for key in table}
    assert keys == {f.key for f in cfg.FIELDS}
    conf = cfg.load(EXAMPLE, env={})
    defaults = cfg.load(None, env={})
    for f in cfg.FIELDS:
        if f.key == "proxy.confdir":
            assert conf[f.key] == Path("~/.mitmproxy").expanduser()
        else:
            assert conf[f.key] == defaults[f.key], f.key


def test_print_config_round_trips(tmp_path: Path) -> None:
    env = {"EGRESSWATCH_PROXY_LISTEN": "127.0.0.1:18081", "EGRESSWATCH_CONFIG": ""}
    code, out, _ = run_cli(
        "run", "--print-config", "-i", "eth9", "--mode", "enforce", "--no-store", env=env
    )
    assert code == 0, out
    assert 'listen = "127.0.0.1:18081"  # env EGRESSWATCH_PROXY_LISTEN' in out
    assert 'interfaces = ["eth9"]  # flag --interface' in out
    path = write(tmp_path, out)
    again = cfg.load(path, env={})
    assert again["proxy.listen"] == ("127.0.0.1", 18081)
    assert again["sniffer.interfaces"] == ("eth9",)
    assert again["policy.mode"] is Mode.ENFORCE
    assert again["store.enabled"] is False


def test_cli_bad_flag_is_a_usage_error() -> None:
    code, _, err = run_cli("run", "--listen", "127.0.0.1:0", "--print-config")
    assert code == 2
    assert "--listen" in err and "port 1-65535" in err


def test_cli_bad_file_exits_3_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[metrics]\n\nlisten = 9721.5\n")
    code, _, err = run_cli("run", "--config", str(path), "--print-config")
    assert code == 3
    assert err.strip() == (
        f"egresswatch: error: {path}:3: metrics.listen: expected a string, got a number"
    )


def test_every_field_has_a_unique_flag_and_env() -> None:
    flags = [f.flag for f in cfg.FIELDS]
    envs = [f.env for f in cfg.FIELDS]
    assert len(set(flags)) == len(flags)
    assert len(set(envs)) == len(envs)
    assert all(e.startswith("EGRESSWATCH_") for e in envs)
