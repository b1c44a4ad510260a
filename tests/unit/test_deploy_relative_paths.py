"""Relative local paths in deploy settings resolve against the inventory file
that set the key (an included file's own folder), like env.source.file and
the docker secret/cert files; a --set value against the working directory."""
from pathlib import Path

import pytest
import yaml

from tasks.core.errors import ConfigError
from tasks.config.inventory import load_inventory
from tasks.release.sources import local_path, plan_source


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """envs/prod.yaml includes ../shared/app.yaml, which names files next to itself."""
    shared = tmp_path / "shared"
    (shared / "build" / "app").mkdir(parents=True)
    (shared / "build" / "app" / "server.js").write_text("// app\n")
    (shared / "stack.compose.yml").write_text("services: {api: {image: 'r/api:${API_TAG}'}}\n")
    write(shared / "app.yaml", {
        "app": {"name": "web", "kind": "node", "port": 3000},
        "deploy": {"source": "artifact", "artifact": "build/app"},
        "docker": {"compose_file": "stack.compose.yml", "compose_tag_vars": ["API_TAG"]},
    })
    top = write(tmp_path / "envs" / "prod.yaml", {"include": ["../shared/app.yaml"],
                                                   "hosts": {"static": {"h1": "10.0.0.1"}}})
    monkeypatch.chdir("/")   # the working directory plays no part
    return tmp_path, top


def test_artifact_from_an_included_file_resolves_beside_that_file(tree):
    root, top = tree
    inv = load_inventory(str(top))
    assert local_path(inv, "build/app", "deploy.artifact") == (root / "shared" / "build" / "app").resolve()
    src = plan_source(inv)
    assert src.kind == "artifact" and src.artifact_name == str((root / "shared" / "build" / "app").resolve())


def test_compose_file_from_an_included_file_resolves_beside_that_file(tree):
    _, top = tree
    inv = load_inventory(str(top), overrides=["deploy.source=compose"])
    src = plan_source(inv, tag="1.2.3")
    assert b"${API_TAG}" in src.compose_file and src.tag_vars == ["API_TAG"]


def test_a_key_set_in_the_top_file_resolves_beside_the_top_file(tree):
    root, top = tree
    (root / "envs" / "other").mkdir()
    data = yaml.safe_load(top.read_text())
    data["deploy"] = {"artifact": "other"}
    top.write_text(yaml.safe_dump(data))
    inv = load_inventory(str(top))
    assert plan_source(inv).artifact_name == str((root / "envs" / "other").resolve())


def test_a_set_value_resolves_against_the_working_directory(tree, monkeypatch):
    root, top = tree
    monkeypatch.chdir(root / "shared")
    inv = load_inventory(str(top), overrides=["deploy.artifact=build/app"])
    assert local_path(inv, "build/app", "deploy.artifact") == Path.cwd() / "build" / "app"


def test_a_missing_path_names_where_it_was_looked_for(tree):
    root, top = tree
    (root / "shared" / "stack.compose.yml").unlink()
    inv = load_inventory(str(top), overrides=["deploy.source=compose"])
    with pytest.raises(ConfigError) as e:
        plan_source(inv, tag="1")
    assert Path(e.value.path).resolve() == (root / "shared" / "app.yaml").resolve()
    assert e.value.key == "docker.compose_file"
    assert str((root / "shared" / "stack.compose.yml").resolve()) in e.value.problem
