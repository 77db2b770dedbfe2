import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from leadscore.config import PROJECT_ROOT, ConfigError, Settings, load_settings


def test_defaults_derive_paths_from_workdir(tmp_path: Path) -> None:
    s = load_settings({"LEADSCORE_WORKDIR": str(tmp_path)})
    assert s.workdir == tmp_path.resolve()
    assert s.raw_dir == tmp_path / "data" / "raw"
    assert s.feast_state_dir == tmp_path / "feature_repo" / "data"
    assert s.tracking_uri.startswith("sqlite:///") and str(tmp_path) in s.tracking_uri
    assert s.conversion_window_days == 30


def test_env_overrides_are_typed() -> None:
    s = load_settings({"LEADSCORE_CONVERSION_WINDOW_DAYS": "45", "LEADSCORE_HASH_SALT": "x"})
    assert s.conversion_window_days == 45
    assert s.hash_salt == "x"


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"LEADSCORE_CONVERSION_WINDOW_DAYS": "thirty"}, "conversion_window_days"),
        ({"LEADSCORE_CONVERSION_WINDOW_DAYS": "0"}, "conversion_window_days"),
        ({"LEADSCORE_PROFILE": "cloud"}, "profile"),
        ({"LEADSCORE_HASH_SALT": ""}, "hash_salt"),
    ],
)
def test_bad_values_name_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_settings(env)


def test_config_file_unknown_field_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("conversion_window_days: 20\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_settings({"LEADSCORE_CONFIG": str(cfg)})


def test_config_file_then_env_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("conversion_window_days: 20\nseed: 7\n")
    s = load_settings({"LEADSCORE_CONFIG": str(cfg), "LEADSCORE_SEED": "9"})
    assert s.conversion_window_days == 20
    assert s.seed == 9


def test_one_field_in_every_source_takes_the_highest(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 7\nconversion_window_days: 20\n")
    assert load_settings({}).seed == 42  # default
    assert load_settings({"LEADSCORE_CONFIG": str(cfg)}).seed == 7  # file over default
    both = load_settings({"LEADSCORE_CONFIG": str(cfg), "LEADSCORE_SEED": "9"})
    assert (both.seed, both.conversion_window_days) == (9, 20)  # environment over file


def test_wrong_type_names_the_field_and_where_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'seed' \(from environment variable LEADSCORE_SEED\)"
                       r": cannot read 'nine'"):
        load_settings({"LEADSCORE_SEED": "nine"})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("intent_half_life_days: soon\n")
    with pytest.raises(ConfigError,
                       match=r"'intent_half_life_days' \(from config file .*c\.yaml\)"):
        load_settings({"LEADSCORE_CONFIG": str(cfg)})


def test_unknown_environment_variable_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"'workidr' \(from environment variable "
                       r"LEADSCORE_WORKIDR\): unknown field"):
        load_settings({"LEADSCORE_WORKIDR": "/somewhere"})
    load_settings({"OTHER_WORKIDR": "/somewhere"})  # other prefixes are not ours


@pytest.mark.parametrize(("text", "problem"), [("seed: [1\n", "not valid YAML"),
                                               ("- seed\n", "must hold a mapping")])
def test_malformed_config_file_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_settings({"LEADSCORE_CONFIG": str(cfg)})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"LEADSCORE_CONFIG": str(tmp_path / "missing.yaml")})


def test_values_are_typed_like_their_fields(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("hash_salt: 12345\nscoring_config: ''\nrouting_policy: rel/policy.yaml\n")
    s = load_settings({"LEADSCORE_CONFIG": str(cfg), "LEADSCORE_API_KEY": "",
                       "LEADSCORE_DRIFT_SHARE_THRESHOLD": "1e-2"})
    assert s.hash_salt == "12345"
    assert s.scoring_config is None and s.api_key is None  # empty means "not set"
    assert s.routing_policy is not None and s.routing_policy.is_absolute()
    assert s.drift_share_threshold == 0.01


def test_settings_are_frozen_values_and_copies_are_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEADSCORE_SEED", "9")
    s = Settings()  # the given values over the defaults: no environment, no file
    assert s.seed == 42 and s == Settings()
    with pytest.raises(ValidationError):
        s.seed = 1  # type: ignore[misc]
    moved = s.with_workdir(tmp_path)
    assert moved.workdir == tmp_path.resolve() and s.workdir != moved.workdir
    assert s.with_(profile="production").optuna_storage.endswith("/leadscore_optuna")
    with pytest.raises(ConfigError, match="'profile'"):
        s.with_(profile="cloud")
    with pytest.raises(ConfigError, match="'bogus'"):
        Settings(bogus=1)
    assert "hash_salt" not in repr(s)


def test_config_does_not_import_profiles() -> None:
    """One direction only: ``leadscore.profiles`` builds on ``leadscore.config``."""
    tree = ast.parse((PROJECT_ROOT / "leadscore" / "config.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "leadscore.profiles" not in imported
