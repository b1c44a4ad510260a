"""Compiled templates are kept between runs, only where nobody else can write,
and an edited template is never rendered from its old compiled form."""
from __future__ import annotations

import os

import pytest

from tasks.core import templates


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    templates.environment.cache_clear()
    yield tmp_path / "cache" / "fabship" / "templates"
    templates.environment.cache_clear()


@pytest.fixture
def template_dir(tmp_path, monkeypatch):
    d = tmp_path / "tpl"
    d.mkdir()
    (d / "unit.j2").write_text("ExecStart={{ cmd }}\n")
    monkeypatch.setattr(templates, "TEMPLATE_DIR", d)
    return d


def test_the_cache_directory_is_private(cache_home):
    assert templates.bytecode_dir() == cache_home
    assert oct(cache_home.stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("mode", [0o770, 0o757, 0o722])
def test_a_directory_others_can_write_is_not_used(cache_home, mode):
    cache_home.mkdir(parents=True)
    os.chmod(cache_home, mode)
    assert templates.bytecode_dir() is None


def test_a_symlink_in_place_of_the_directory_is_not_used(cache_home, tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    cache_home.parent.mkdir(parents=True)
    cache_home.symlink_to(tmp_path / "elsewhere")
    assert templates.bytecode_dir() is None


def test_a_second_run_loads_the_compiled_template(cache_home, template_dir):
    assert templates.render("unit.j2", cmd="a") == "ExecStart=a\n"
    compiled = list(cache_home.iterdir())
    assert len(compiled) == 1 and compiled[0].stat().st_mode & 0o077 == 0
    templates.environment.cache_clear()   # a new process
    stamp = compiled[0].stat().st_mtime_ns
    assert templates.render("unit.j2", cmd="b") == "ExecStart=b\n"
    assert compiled[0].stat().st_mtime_ns == stamp, "the template was compiled again"


def test_an_edited_template_is_compiled_again(cache_home, template_dir):
    templates.render("unit.j2", cmd="a")
    templates.environment.cache_clear()
    (template_dir / "unit.j2").write_text("ExecStart=/usr/bin/env {{ cmd }}\n")
    assert templates.render("unit.j2", cmd="a") == "ExecStart=/usr/bin/env a\n"


def test_no_cache_when_the_home_cannot_hold_one(monkeypatch, tmp_path, template_dir):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))   # a file: mkdir fails
    templates.environment.cache_clear()
    try:
        assert templates.bytecode_dir() is None
        assert templates.render("unit.j2", cmd="a") == "ExecStart=a\n"
    finally:
        templates.environment.cache_clear()
