"""Settings sources (defaults, env, .env, agent_server.toml, langgraph.json) and precedence."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent_server.settings import Settings, parse_graph_specs


@pytest.fixture(autouse=True)
def clean_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and no configuration in the environment."""
    for key in list(os.environ):
        if key.startswith("AGENT_SERVER_") or key in {"OPENAI_API_KEY", "OPENAI_BASE_URL"}:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_toml(text: str) -> None:
    Path("agent_server.toml").write_text(text, encoding="utf-8")


def write_langgraph_json(data: object) -> None:
    Path("langgraph.json").write_text(json.dumps(data), encoding="utf-8")


def test_defaults() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.log_level == "info"
    assert settings.graphs == {}
    assert settings.tools_dir == Path("tools")
    assert settings.model == "scripted"
    assert settings.openai_api_key is None
    assert settings.openai_base_url is None
    assert settings.database_url == ".agent-server/threads.sqlite"
    assert not settings.checkpoint_in_memory


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SERVER_PORT", "9100")
    monkeypatch.setenv("AGENT_SERVER_HOST", "0.0.0.0")
    monkeypatch.setenv("AGENT_SERVER_MODEL", "openai:gpt-4o-mini")
    monkeypatch.setenv("AGENT_SERVER_GRAPHS", '{"a": "a.py:graph", "b": "pkg.mod:graph"}')
    monkeypatch.setenv("AGENT_SERVER_TOOLS_DIR", "my_tools")
    monkeypatch.setenv("AGENT_SERVER_DATABASE_URL", "memory://")
    monkeypatch.setenv("AGENT_SERVER_PING_INTERVAL", "2.5")
    settings = Settings()
    assert settings.port == 9100
    assert settings.host == "0.0.0.0"
    assert settings.model == "openai:gpt-4o-mini"
    assert settings.graphs == {"a": "a.py:graph", "b": "pkg.mod:graph"}
    assert settings.tools_dir == Path("my_tools")
    assert settings.checkpoint_in_memory
    assert settings.ping_interval == 2.5


def test_environment_names_need_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9100")
    monkeypatch.setenv("MODEL", "openai:gpt-4o")
    assert (Settings().port, Settings().model) == (8000, "scripted")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AGENT_SERVER_PORT", "eighty"),
        ("AGENT_SERVER_PORT", "70000"),
        ("AGENT_SERVER_PING_INTERVAL", "0"),
        ("AGENT_SERVER_GRAPHS", "not json"),
    ],
)
def test_invalid_environment_values_are_value_errors(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # The CLI turns ValueError into a one-line message and exit status 2.
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError):
        Settings()


def test_toml_file_in_the_working_directory() -> None:
    write_toml(
        'port = 9001\nmodel = "openai:gpt-4o"\ndatabase_url = "memory://"\n'
        '[graphs]\nagent = "graphs/agent.py:make_graph"\nother = "pkg.mod:graph"\n'
    )
    settings = Settings()
    assert settings.port == 9001
    assert settings.model == "openai:gpt-4o"
    assert settings.checkpoint_in_memory
    assert settings.graphs == {"agent": "graphs/agent.py:make_graph", "other": "pkg.mod:graph"}


def test_toml_file_elsewhere_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml("port = 9001\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert Settings().port == 8000


def test_invalid_toml_names_the_file() -> None:
    write_toml("port = \n")
    with pytest.raises(ValueError, match=r"agent_server\.toml"):
        Settings()


def test_langgraph_json_graphs() -> None:
    write_langgraph_json(
        {
            "dependencies": ["."],
            "env": ".env",
            "python_version": "3.11",
            "graphs": {
                "a": "./a.py:graph",
                "b": {"path": "./b.py:make_graph", "description": "The B graph"},
            },
        }
    )
    settings = Settings()
    assert settings.graphs == {"a": "./a.py:graph", "b": "./b.py:make_graph"}
    # Only the graphs map is ours: nothing else of langgraph.json leaks into the settings.
    assert settings.port == 8000 and settings.model == "scripted"


@pytest.mark.parametrize("data", [{"dependencies": ["."]}, {"graphs": ["a.py:graph"]}, []])
def test_langgraph_json_without_a_graphs_map(data: object) -> None:
    write_langgraph_json(data)
    assert Settings().graphs == {}


def test_invalid_langgraph_json_names_the_file() -> None:
    Path("langgraph.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"langgraph\.json"):
        Settings()


def test_dotenv_file(monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("AGENT_SERVER_PORT=9004\nAGENT_SERVER_MODEL=from-dotenv\n")
    write_toml("port = 9001\nlog_level = 'debug'\n")
    monkeypatch.setenv("AGENT_SERVER_MODEL", "from-env")
    settings = Settings()
    assert settings.port == 9004  # .env beats the toml file
    assert settings.model == "from-env"  # the environment beats .env
    assert settings.log_level == "debug"


def test_scalar_precedence_kwargs_env_toml(monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml("port = 9001\nhost = 'toml-host'\nlog_level = 'debug'\n")
    monkeypatch.setenv("AGENT_SERVER_PORT", "9002")
    monkeypatch.setenv("AGENT_SERVER_HOST", "env-host")
    settings = Settings(port=9003)
    assert (settings.port, settings.host, settings.log_level) == (9003, "env-host", "debug")


def test_graph_maps_merge_across_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    write_langgraph_json({"graphs": {"shared": "lg.py:graph", "lg_only": "lg.py:only"}})
    write_toml('[graphs]\nshared = "toml.py:graph"\ntoml_only = "toml.py:only"\n')
    monkeypatch.setenv(
        "AGENT_SERVER_GRAPHS", json.dumps({"shared": "env.py:graph", "env_only": "env.py:only"})
    )
    # What the CLI passes for `--graph shared=cli.py:graph --graph cli_only=cli.py:only`.
    cli = parse_graph_specs(["shared=cli.py:graph", "cli_only=cli.py:only"])

    everything = {
        "lg_only": "lg.py:only",
        "toml_only": "toml.py:only",
        "env_only": "env.py:only",
        "cli_only": "cli.py:only",
    }
    assert Settings(graphs=cli).graphs == {**everything, "shared": "cli.py:graph"}

    del everything["cli_only"]
    assert Settings().graphs == {**everything, "shared": "env.py:graph"}

    monkeypatch.delenv("AGENT_SERVER_GRAPHS")
    del everything["env_only"]
    assert Settings().graphs == {**everything, "shared": "toml.py:graph"}

    Path("agent_server.toml").unlink()
    del everything["toml_only"]
    assert Settings().graphs == {**everything, "shared": "lg.py:graph"}


def test_a_cli_graph_adds_to_the_toml_graphs() -> None:
    write_toml('[graphs]\nagent = "graphs/agent.py:make_graph"\n')
    settings = Settings(graphs=parse_graph_specs(["extra=extra.py:graph"]))
    assert settings.graphs == {"agent": "graphs/agent.py:make_graph", "extra": "extra.py:graph"}


def test_parse_graph_specs() -> None:
    assert parse_graph_specs([" a = a.py:graph ", "b=pkg.mod:make_graph"]) == {
        "a": "a.py:graph",
        "b": "pkg.mod:make_graph",
    }
    assert parse_graph_specs(("a=x.py:g", "a=y.py:g")) == {"a": "y.py:g"}  # the last one wins
    assert parse_graph_specs([]) == {}


@pytest.mark.parametrize("spec", ["a.py:graph", "=a.py:graph", "name=", " = ", ""])
def test_parse_graph_specs_rejects_invalid(spec: str) -> None:
    with pytest.raises(ValueError, match="expected NAME=REF"):
        parse_graph_specs([spec])


def test_graphs_field_accepts_specs() -> None:
    assert Settings(graphs=["a=a.py:graph"]).graphs == {"a": "a.py:graph"}
    assert Settings(graphs="a=a.py:graph,b=b.py:graph").graphs == {
        "a": "a.py:graph",
        "b": "b.py:graph",
    }
    with pytest.raises(ValueError, match="expected NAME=REF"):
        Settings(graphs=["a.py:graph"])


def test_openai_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-plain")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://plain.example/v1")
    settings = Settings()
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-plain"
    assert settings.openai_base_url == "http://plain.example/v1"
    assert "sk-plain" not in repr(settings)  # a secret is never printed

    monkeypatch.setenv("AGENT_SERVER_OPENAI_API_KEY", "sk-prefixed")
    monkeypatch.setenv("AGENT_SERVER_OPENAI_BASE_URL", "http://prefixed.example/v1")
    settings = Settings()
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-prefixed"
    assert settings.openai_base_url == "http://prefixed.example/v1"

    explicit = Settings(openai_api_key="sk-explicit")
    assert explicit.openai_api_key is not None
    assert explicit.openai_api_key.get_secret_value() == "sk-explicit"


@pytest.mark.parametrize("url", ["memory://", ":memory:"])
def test_checkpoint_in_memory(url: str) -> None:
    assert Settings(database_url=url).checkpoint_in_memory
