"""tasks/release/sources.py: planning on the control machine (validation before any
connection) and the host-side git/artifact scripts run locally."""
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tasks.core.errors import ConfigError
from tasks.config.app import Layout
from tasks.release.sources import (
    artifact_extract_cmd, git_checkout_cmd, git_fetch_bundle_cmd, git_fetch_url_cmd, image_ref, make_bundle,
    plan_source, tar_directory,
)

from .localctx import load_inv

REPO = Path(__file__).resolve().parents[2]
RID = "20250101T000000Z-v1"
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def sh(cmd, stdin=b""):
    return subprocess.run(["sh", "-c", cmd.render()], input=stdin, capture_output=True)


@pytest.fixture
def app_repo(tmp_path, monkeypatch):
    """apps/node-app as a git repo with tags v1 and v2."""
    d = tmp_path / "src"
    shutil.copytree(REPO / "apps" / "node-app", d, ignore=shutil.ignore_patterns("dist", "node_modules"))
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    git("init", "-q", "-b", "main", cwd=d)
    (d / "VERSION").write_text("v1\n")
    git("add", "-A", cwd=d)
    git("commit", "-qm", "v1", cwd=d)
    git("tag", "v1", cwd=d)
    (d / "VERSION").write_text("v2\n")
    git("commit", "-qam", "v2", cwd=d)
    git("tag", "v2", cwd=d)
    return d


def lay_for(tmp_path):
    import grp
    import pwd

    return Layout(app="web", kind="node", user=pwd.getpwuid(os.getuid()).pw_name,
                  group=grp.getgrgid(os.getgid()).gr_name, root=str(tmp_path / "opt"), config_dir="/x",
                  env_path="/x/e", strategy="blue_green", port=3000, ports=(3001, 3002), nginx=True)


@needs_git
def test_plan_git_local_resolves_ref(tmp_path, app_repo):
    inv = load_inv(tmp_path, {"deploy": {"source": "git", "repo": str(app_repo)}})
    src = plan_source(inv, ref="v1")
    assert src.commit == git("rev-parse", "v1^{commit}", cwd=app_repo)
    assert src.version == f"v1-{src.commit[:7]}" and src.local_repo == str(app_repo)
    sha = git("rev-parse", "HEAD", cwd=app_repo)
    assert plan_source(inv, ref=sha[:10]).version == sha[:12]
    with pytest.raises(ConfigError) as ei:
        plan_source(inv, ref="v9")
    assert "--ref" in str(ei.value) and "'v9' is not a branch, tag or commit" in str(ei.value)
    with pytest.raises(ConfigError):
        plan_source(inv, ref="--upload-pack=evil")


@needs_git
def test_bundle_fetch_and_checkout_locally(tmp_path, app_repo):
    lay = lay_for(tmp_path)
    os.makedirs(lay.release_dir(RID))
    git("init", "-q", "--bare", lay.repo, cwd=tmp_path)
    v1 = git("rev-parse", "v1^{commit}", cwd=app_repo)
    v2 = git("rev-parse", "v2^{commit}", cwd=app_repo)
    before = git("status", "--porcelain", cwd=app_repo), git("for-each-ref", cwd=app_repo)
    full = make_bundle(str(app_repo), v1, [])
    b = tmp_path / "b1.bundle"
    b.write_bytes(full)
    r = sh(git_fetch_bundle_cmd(lay, str(b), v1))
    assert r.returncode == 0, r.stderr
    assert not b.exists()  # the uploaded bundle is removed
    # incremental: the host already has v1, so v2's bundle holds only the new commit
    heads = git("for-each-ref", "--format=%(objectname)", cwd=lay.repo).split()
    assert v1 in heads
    inc = make_bundle(str(app_repo), v2, heads)
    assert len(inc) < len(full)
    b2 = tmp_path / "b2.bundle"
    b2.write_bytes(inc)
    assert sh(git_fetch_bundle_cmd(lay, str(b2), v2)).returncode == 0
    r = sh(git_checkout_cmd(lay, RID, v2))
    assert r.returncode == 0, r.stderr
    rel = Path(lay.release_dir(RID))
    assert (rel / "VERSION").read_text() == "v2\n" and (rel / "package.json").exists()
    assert not (rel / ".git").exists()
    assert (git("status", "--porcelain", cwd=app_repo), git("for-each-ref", cwd=app_repo)) == before


@needs_git
def test_fetch_from_url_locally(tmp_path, app_repo):
    lay = lay_for(tmp_path)
    git("init", "-q", "--bare", lay.repo, cwd=tmp_path)
    r = sh(git_fetch_url_cmd(lay, f"file://{app_repo}", "v1"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == git("rev-parse", "v1^{commit}", cwd=app_repo)
    r = sh(git_fetch_url_cmd(lay, f"file://{app_repo}", "main"))
    assert r.stdout.decode().strip() == git("rev-parse", "main", cwd=app_repo)
    r = sh(git_fetch_url_cmd(lay, f"file://{app_repo}", "nope"))
    assert r.returncode == 4 and b"ref nope not found" in r.stderr


def test_plan_git_errors(tmp_path):
    inv = load_inv(tmp_path, {"deploy": {"source": "git"}})
    with pytest.raises(ConfigError) as ei:
        plan_source(inv)
    assert "deploy.repo" in str(ei.value) and str(tmp_path) in str(ei.value)
    inv = load_inv(tmp_path, {"deploy": {"source": "git", "repo": "no/such/dir"}})
    with pytest.raises(ConfigError) as ei:
        plan_source(inv)
    assert "not a URL" in str(ei.value)
    url = load_inv(tmp_path, {"deploy": {"source": "git", "repo": "https://example.test/a.git", "ref": "v3"}})
    src = plan_source(url)
    assert (src.repo_url, src.ref, src.version, src.commit) == ("https://example.test/a.git", "v3", "v3", "")


def test_artifact_directory_is_reproducible(tmp_path):
    d = tmp_path / "art"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("A")
    (d / "sub" / "b.txt").write_text("B")
    (d / ".git").mkdir()
    (d / ".git" / "HEAD").write_text("x")
    one = tar_directory(d)
    os.utime(d / "a.txt", (1, 1))
    assert tar_directory(d) == one  # same tree, same bytes, same version
    names = tarfile.open(fileobj=io.BytesIO(one)).getnames()
    assert "a.txt" in names and "sub/b.txt" in names and not any(n.startswith(".git") for n in names)
    inv = load_inv(tmp_path, {"deploy": {"source": "artifact", "artifact": str(d)}})
    src = plan_source(inv)
    assert src.version.startswith("art-") and src.strip == 0


def _tarball(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_artifact_tarball_strips_single_top_dir_and_extracts(tmp_path):
    t = tmp_path / "app-1.2.3.tar.gz"
    _tarball(t, [("app-1.2.3/package.json", b"{}"), ("app-1.2.3/src/server.js", b"//")])
    inv = load_inv(tmp_path, {"deploy": {"source": "artifact", "artifact": str(t)}})
    src = plan_source(inv)
    assert src.version == "app-1.2.3" and src.strip == 1
    lay = lay_for(tmp_path)
    os.makedirs(lay.release_dir(RID))
    up = tmp_path / "upload.tmp"
    up.write_bytes(src.artifact)
    r = sh(artifact_extract_cmd(lay, RID, str(up), src.strip))
    assert r.returncode == 0, r.stderr
    assert (Path(lay.release_dir(RID)) / "src" / "server.js").exists() and not up.exists()


def test_artifact_errors(tmp_path):
    bad = tmp_path / "evil.tar"
    _tarball(bad, [("../../etc/cron.d/x", b"x")])
    for value, problem in ((str(bad), "unsafe member"), (str(tmp_path / "missing.tgz"), "no such file"),
                           (str(tmp_path / "app.yaml"), "expected a directory or a .tar")):
        inv = load_inv(tmp_path, {"deploy": {"source": "artifact", "artifact": value}})
        with pytest.raises(ConfigError) as ei:
            plan_source(inv)
        assert problem in str(ei.value) and "deploy.artifact" in str(ei.value)
    inv = load_inv(tmp_path)
    with pytest.raises(ConfigError) as ei:
        plan_source(inv, artifact=str(tmp_path / "nope"))
    assert "--artifact" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        plan_source(inv, tag="v1")
    assert "--tag" in str(ei.value) and "does not apply" in str(ei.value)


def test_image_ref_and_tag(tmp_path):
    inv = load_inv(tmp_path, {"app": {"kind": "docker"}, "deploy": {"source": "image"},
                              "docker": {"image": "fabship/docker-service", "registry": "10.231.0.1:5000"}})
    src = plan_source(inv, tag="v2")
    assert src.image == "10.231.0.1:5000/fabship/docker-service:v2" and src.version == "v2"
    assert image_ref(load_inv(tmp_path, {"docker": {"image": "reg.example.com/x", "registry": "r:5000"}}), "1") == \
        "reg.example.com/x:1"
    with pytest.raises(ConfigError) as ei:
        plan_source(inv)
    assert "--tag" in str(ei.value)
    with pytest.raises(ConfigError):
        plan_source(inv, tag="bad tag!")
