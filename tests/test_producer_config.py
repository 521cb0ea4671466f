"""One configuration for every process: the producer reads the workers' beanmail.toml and
BEANMAIL_* variables, a framework's settings on top, and refuses at start what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.config import ConfigError, load


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "beanmail.toml"
    path.write_text(text)
    return str(path)


def test_the_secret_set_only_in_beanmail_toml_signs_the_producers_jobs(tmp_path: Path) -> None:
    path = toml(tmp_path, '[beanmail]\nsecret = "k1,k0"\nbeanstalk_url = "beanstalk://10.9.9.9:11300"\n'
                          'smtp_url = "smtp://relay:25"\n')  # a worker-only key is the workers' to check
    config = load(environ={"BEANMAIL_CONFIG": path})
    assert (config.secret, config.url) == ("k1,k0", "beanstalk://10.9.9.9:11300")
    assert config.sources["secret"] == path
    assert config.notifier().secret == "k1,k0"


def test_the_environment_is_over_the_file_and_the_framework_over_both(tmp_path: Path) -> None:
    path = toml(tmp_path, '[beanmail]\nsecret = "file"\nttr = 60\n')
    config = load({"SECRET": "framework"}, environ={"BEANMAIL_CONFIG": path, "BEANMAIL_SECRET": "env",
                                                    "BEANMAIL_TTR": "90"})
    assert (config.secret, config.ttr) == ("framework", 90)
    assert (config.sources["secret"], config.sources["ttr"]) == ("BEANMAIL['SECRET']", "BEANMAIL_TTR")


def test_a_misspelt_framework_key_is_refused_naming_the_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"BEANMAIL\['SECERT'\] is not a beanmail setting; did you mean "
                                          r"BEANMAIL\['SECRET'\]\?"):
        load({"SECERT": "x"}, environ={})
    with pytest.raises(ConfigError, match=r"app.config\['BEANMAIL_SECERT'\]|BEANMAIL_SECERT is not"):
        load({"SECERT": "x"}, label="BEANMAIL_", environ={})
    assert load({"ON_COMMIT": False}, framework_keys={"ON_COMMIT"}, environ={}).extra == {"ON_COMMIT": False}


def test_a_store_that_does_not_exist_is_an_error_never_created(tmp_path: Path) -> None:
    missing = tmp_path / "srv" / "beanmail" / "var" / "beanmail.sqlite3"
    with pytest.raises(ConfigError, match=r"BEANMAIL\['STORE'\]: .*beanmail.sqlite3 does not exist: point it at the"
                                          r" store the workers use"):
        load({"STORE": str(missing)}, environ={})
    assert not missing.parent.exists()
    missing.parent.mkdir(parents=True)
    missing.write_bytes(b"")
    assert load({"STORE": str(missing)}, environ={}).store == str(missing)
    assert load({"STORE": "postgresql://db/beanmail"}, environ={}).store == "postgresql://db/beanmail"


@pytest.mark.parametrize("given, message", [
    ({"URL": "http://127.0.0.1:11300"}, r"BEANMAIL\['URL'\]: "),
    ({"SECRET": " , "}, r"BEANMAIL\['SECRET'\]: names no key"),
    ({"TTR": "soon"}, r"BEANMAIL\['TTR'\]: 'soon' is not a whole number"),
])
def test_a_bad_value_is_refused_at_start_naming_where_it_was_read(given: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(given, environ={})


def test_a_broken_file_is_named(tmp_path: Path) -> None:
    path = toml(tmp_path, "[beanmail\nsecret = 1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load(environ={"BEANMAIL_CONFIG": path})
    with pytest.raises(ConfigError, match="cannot read"):
        load(environ={"BEANMAIL_CONFIG": str(tmp_path / "nope.toml")})
