from pathlib import Path

import pytest

from leadscore.config import ConfigError, load_settings


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
