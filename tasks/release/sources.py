"""Where a release comes from: git, artifact, docker image, docker compose.

Each source has two halves:
- `plan_*` runs on the control machine before anything connects: it
  validates the options (one-line ConfigError naming the key or option),
  resolves what it can (a local repo's commit, the artifact tarball, the
  image reference) and returns a `Source`.
- `Source.prepare(ctx, lay, state, rid)` fills /opt/APP/releases/<rid> on a
  host (fetch + checkout, upload + extract, docker pull, compose pull).

Git: `deploy.repo` is either a URL the *host* can reach (https, ssh,
git@host:path, file://) fetched into a cached bare repo at /opt/APP/repo, or
a path on the control machine: then fabship resolves --ref locally, makes a
`git bundle` of only the commits the host's cache lacks, uploads it over the
SSH connection (SFTP) and fetches from it. Either way the release is a
`git archive` of the commit (no .git in releases).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..config.app import Layout, safe_part
from ..core.commands import Cmd, Raw, as_user, quote, sh
from ..core.errors import ConfigError, StepFailed
from ..core.step import CHANGED, OK, Change, Failure, Record
from ..core.templates import render
from ..facts.releases import HostState
from .releases import NOLINK

URL_RE = re.compile(r"^(https?|ssh|git|file)://|^[A-Za-z0-9._-]+@[A-Za-z0-9._-]+:")
SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")


@dataclass
class Source:
    kind: str                  # git | artifact | image | compose
    version: str               # goes into the release id
    ref: str = ""
    commit: str = ""           # git: resolved commit (local repos: known before connecting)
    repo_url: str = ""         # git: URL the host fetches from
    local_repo: str = ""       # git: local path pushed as a bundle
    artifact: bytes = b""      # artifact: tar (gz) bytes
    artifact_name: str = ""
    strip: int = 0             # artifact: leading path components to strip
    image: str = ""            # image: registry/name:tag
    tag: str = ""
    compose_file: bytes = b""
    tag_vars: list = field(default_factory=list)
    build: list = field(default_factory=list)

    def describe(self) -> str:
        if self.kind == "git":
            where = self.local_repo or self.repo_url
            return f"git {where} @ {self.ref}" + (f" ({self.commit[:12]})" if self.commit else "")
        if self.kind == "artifact":
            return f"artifact {self.artifact_name} ({len(self.artifact)} bytes)"
        if self.kind == "image":
            return f"image {self.image}"
        return f"compose {self.tag_vars} = {self.tag}"

    # -- on a host ---------------------------------------------------------------------
    def prepare(self, ctx, lay: Layout, st: HostState, rid: str) -> dict:
        """Fill the release dir; returns facts for the release log (commit, image)."""
        if self.kind == "git":
            return _prepare_git(ctx, self, lay, st, rid)
        if self.kind == "artifact":
            return _prepare_artifact(ctx, self, lay, rid)
        if self.kind == "image":
            return _prepare_image(ctx, self, lay, rid)
        return _prepare_compose(ctx, self, lay, st, rid)


# -- planning: on the control machine, before connecting ---------------------------------------

def base_dir(inv, key: str | None = None) -> Path:
    """The directory relative paths are relative to: that of the inventory file
    that set `key` (an included file's own folder, like env.source.file), the
    working directory for a --set value, the top inventory's without a key."""
    src = inv.file_of(key) if key else str(inv.path)
    if src == "command line":
        return Path.cwd()
    return Path(src).resolve().parent


def local_path(inv, value: str, key: str | None = None) -> Path:
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    return base_dir(inv, key) / p


def plan_source(inv, *, ref=None, artifact=None, tag=None) -> Source:
    kind = inv.get("deploy.source")
    if not kind:
        raise inv.error("deploy.source", "required for deploy: git, artifact, image or compose")
    build = list(inv.get("deploy.build") or [])
    if kind == "git":
        src = plan_git(inv, ref)
    elif kind == "artifact":
        src = plan_artifact(inv, artifact)
    elif kind == "image":
        src = plan_image(inv, tag)
    else:
        src = plan_compose(inv, tag)
    if build and kind in ("image", "compose"):
        raise inv.error("deploy.build", f"build commands run in a release dir; deploy.source {kind} has none "
                                        "(build the image before pushing it)")
    src.build = build
    for opt, val, kinds in (("--ref", ref, ("git",)), ("--artifact", artifact, ("artifact",)),
                            ("--tag", tag, ("image", "compose"))):
        if val and kind not in kinds:
            raise ConfigError("command line", opt, f"does not apply to deploy.source {kind} "
                                                   f"(set in {inv.file_of('deploy.source')})")
    return src


def _git(args: list[str], cwd: str | None = None, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, timeout=300)


def plan_git(inv, ref: str | None) -> Source:
    repo = inv.get("deploy.repo")
    if not repo:
        raise inv.error("deploy.repo", "required for deploy.source git: a URL the hosts can reach, or a local path")
    ref = ref or inv.get("deploy.ref") or "main"
    if ref.startswith("-") or re.search(r"[\s~^:?*\[\\]|\.\.", ref):
        raise ConfigError("command line" if ref else inv.file_of("deploy.ref"), "--ref",
                          f"{ref!r} is not a branch, tag or commit name")
    if URL_RE.match(repo):
        return Source("git", version=safe_part(ref), ref=ref, repo_url=repo)
    path = local_path(inv, repo, "deploy.repo")
    if not path.exists():
        raise inv.error("deploy.repo", f"{repo!r} is not a URL (https://, ssh://, git@host:path, file://) "
                                       f"and no such local directory ({path})")
    r = _git(["rev-parse", "--git-dir"], cwd=str(path))
    if r.returncode != 0:
        raise inv.error("deploy.repo", f"{path} is not a git repository")
    commit = resolve_local(path, ref)
    if not commit:
        raise ConfigError("command line", "--ref", f"{ref!r} is not a branch, tag or commit in {path}")
    version = safe_part(commit[:12]) if commit.startswith(ref) else f"{safe_part(ref, 30)}-{commit[:7]}"
    return Source("git", version=version, ref=ref, commit=commit, local_repo=str(path))


def resolve_local(path: Path, ref: str) -> str | None:
    for cand in (f"refs/tags/{ref}", f"refs/heads/{ref}", ref):
        r = _git(["rev-parse", "--verify", "--quiet", f"{cand}^{{commit}}"], cwd=str(path))
        if r.returncode == 0:
            return r.stdout.decode().strip()
    return None


def make_bundle(path: str, commit: str, exclude: list[str]) -> bytes:
    """A bundle with the commit under refs/fabship/deploy and only the history
    the host lacks (commits it already has are prerequisites). Built in a
    throwaway clone's ref namespace, so the user's repo is never modified."""
    excl = []
    for h in exclude:  # only commits this repo knows can be excluded
        if _git(["cat-file", "-e", f"{h}^{{commit}}"], cwd=path).returncode == 0 and h != commit:
            excl.append(f"^{h}")
    with tempfile.TemporaryDirectory(prefix="fabship-bundle-") as td:
        tmp_repo = os.path.join(td, "r.git")
        r = _git(["init", "-q", "--bare", tmp_repo])
        if r.returncode:
            raise StepFailed("git init failed on the control machine", r.stderr.decode(errors="replace"))
        alt = os.path.join(_git(["rev-parse", "--git-common-dir"], cwd=path).stdout.decode().strip(), "objects")
        alt = alt if os.path.isabs(alt) else os.path.join(path, alt)
        Path(tmp_repo, "objects", "info", "alternates").write_text(alt + "\n")
        r = _git(["--git-dir", tmp_repo, "update-ref", "refs/fabship/deploy", commit])
        if r.returncode:
            raise StepFailed("git update-ref failed on the control machine", r.stderr.decode(errors="replace"))
        out = os.path.join(td, "deploy.bundle")
        r = _git(["--git-dir", tmp_repo, "bundle", "create", "-q", out, "refs/fabship/deploy", *excl])
        if r.returncode:
            raise StepFailed("git bundle failed on the control machine", r.stderr.decode(errors="replace")[-2000:])
        return Path(out).read_bytes()


def plan_artifact(inv, artifact: str | None) -> Source:
    value = artifact or inv.get("deploy.artifact")
    key = "--artifact" if artifact else "deploy.artifact"
    where = "command line" if artifact else inv.file_of("deploy.artifact")
    if not value:
        raise inv.error("deploy.artifact", "required for deploy.source artifact: a local directory or tarball "
                                           "(or pass --artifact PATH)")
    p = local_path(inv, value, "deploy.artifact") if not artifact else Path(value).expanduser().resolve()
    if not p.exists():
        raise ConfigError(where, key, f"{p}: no such file or directory")
    if p.is_dir():
        data = tar_directory(p)
        digest = hashlib.sha256(data).hexdigest()[:8]
        return Source("artifact", version=f"{safe_part(p.name, 30)}-{digest}", artifact=data,
                      artifact_name=str(p))
    if not re.search(r"\.(tar|tar\.gz|tgz|tar\.xz|tar\.bz2)$", p.name):
        raise ConfigError(where, key, f"{p}: expected a directory or a .tar/.tar.gz/.tgz/.tar.xz/.tar.bz2 file")
    data = p.read_bytes()
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            names = [m.name for m in tf.getmembers()]
            bad = [n for n in names if n.startswith("/") or ".." in Path(n).parts]
    except tarfile.TarError as e:
        raise ConfigError(where, key, f"{p}: not a readable tar archive ({e})") from None
    if bad:
        raise ConfigError(where, key, f"{p}: unsafe member path {bad[0]!r} (absolute or '..')")
    tops = {Path(n).parts[0] for n in names if n not in (".", "./") and Path(n).parts}
    strip = 1 if len(tops) == 1 and any(len(Path(n).parts) > 1 for n in names) and "." not in tops else 0
    stem = re.sub(r"\.(tar|tar\.gz|tgz|tar\.xz|tar\.bz2)$", "", p.name)
    return Source("artifact", version=safe_part(stem, 40), artifact=data, artifact_name=str(p), strip=strip)


def reproducible_tar(root: Path, *, skip: tuple = (), uname: str = "") -> bytes:
    """An uncompressed tar of a directory that is the same bytes for the same
    tree: sorted entries, owner 0 (`uname`), mtime 0, directories named in
    `skip` left out at any depth. Artifacts and the sample images use it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in skip)
            for name in sorted(dirs) + sorted(files):
                full = Path(dirpath) / name
                info = tf.gettarinfo(str(full), arcname=str(full.relative_to(root)))
                info.uid = info.gid = 0
                info.uname = info.gname = uname
                info.mtime = 0
                if info.isfile():
                    with open(full, "rb") as f:
                        tf.addfile(info, f)
                else:
                    tf.addfile(info)
    return buf.getvalue()


def tar_directory(path: Path) -> bytes:
    """A reproducible .tar.gz of a directory (no .git, sorted, fixed mtimes
    and owners): the same tree gives the same bytes and the same version."""
    import gzip

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(reproducible_tar(path, skip=(".git",)))
    return buf.getvalue()


def image_ref(inv, tag: str) -> str:
    image = inv.get("deploy.image") or inv.get("docker.image")
    if not image:
        raise inv.error("docker.image", "required for deploy.source image (or deploy.image)")
    registry = inv.get("docker.registry")
    first = image.split("/", 1)[0]
    has_registry = "/" in image and ("." in first or ":" in first or first == "localhost")
    if registry and not has_registry:
        image = f"{registry.rstrip('/')}/{image}"
    return f"{image}:{tag}"


def _tag(inv, tag: str | None) -> str:
    tag = tag or inv.get("deploy.tag")
    if not tag:
        raise inv.error("deploy.tag", "required: pass --tag TAG (or set deploy.tag)")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", str(tag)):
        raise ConfigError("command line", "--tag", f"{tag!r} is not a valid image tag")
    return str(tag)


def plan_image(inv, tag: str | None) -> Source:
    tag = _tag(inv, tag)
    return Source("image", version=safe_part(tag), tag=tag, image=image_ref(inv, tag))


def plan_compose(inv, tag: str | None) -> Source:
    tag = _tag(inv, tag)
    f = inv.get("docker.compose_file")
    if not f:
        raise inv.error("docker.compose_file", "required for deploy.source compose: the compose file to deploy")
    p = local_path(inv, f, "docker.compose_file")
    if not p.is_file():
        raise inv.error("docker.compose_file", f"{p}: no such file")
    return Source("compose", version=safe_part(tag), tag=tag, compose_file=p.read_bytes(),
                  tag_vars=list(inv.get("docker.compose_tag_vars") or ["TAG"]))


# -- command builders (pure) -------------------------------------------------------------------

def make_release_dir_cmd(lay: Layout, rid: str) -> Cmd:
    """releases/ is the app user's: root makes it only when it is missing; the
    release dir itself is made by the app user with a plain mkdir, which fails
    on anything already there (a link planted under a predictable id included)."""
    rel = lay.release_dir(rid)
    return Cmd("sh", "-c", "\n".join([
        "set -eu", NOLINK,
        sh("nolink {} {}", lay.releases, rel).render(),
        sh("[ -d {} ] || install -d -o {} -g {} -m 0755 -- {}", lay.releases, lay.user, lay.group,
           lay.releases).render(),
        as_user(lay.user, sh("mkdir -m 0755 -- {} && chgrp -- {} {}", rel, lay.group, rel)).render(),
    ]))


def git_init_cmd(lay: Layout) -> Cmd:
    return sh("command -v git >/dev/null || {{ echo 'git is not installed (add it to packages: and run "
              "fab bootstrap)' >&2; exit 3; }}; [ -d {} ] || git init -q --bare {}", lay.repo, lay.repo)


def git_fetch_url_cmd(lay: Layout, url: str, ref: str) -> Cmd:
    """Fetch branches and tags from the URL into the cache; print the ref's commit."""
    g = f"git --git-dir={_q(lay.repo)}"
    resolve = " || ".join(f"{g} rev-parse --verify --quiet {_q(c + '^{commit}')}"
                          for c in (f"refs/tags/{ref}", f"refs/heads/{ref}", ref))
    return Cmd("sh", "-c", "\n".join([
        "set -eu",
        f"{g} fetch --prune --quiet --force {_q(url)} '+refs/heads/*:refs/heads/*' '+refs/tags/*:refs/tags/*'",
        f"{resolve} || {{ echo {_q(f'ref {ref} not found in {url}')} >&2; exit 4; }}",
    ]))


def git_fetch_bundle_cmd(lay: Layout, bundle: str, commit: str) -> Cmd:
    g = f"git --git-dir={_q(lay.repo)}"
    return Cmd("sh", "-c", "\n".join([
        "set -eu",
        f"trap 'rm -f {_q(bundle)}' EXIT",
        f"{g} fetch --quiet --force {_q(bundle)} '+refs/fabship/deploy:refs/fabship/deploy'",
        f"{g} cat-file -e {_q(commit + '^{commit}')}",
        f"{g} update-ref {_q('refs/fabship/keep/' + commit)} {_q(commit)}",
    ]))


def git_checkout_cmd(lay: Layout, rid: str, commit: str) -> Cmd:
    """Root reads its own cache; the app user extracts into its own release dir
    (a tree that may hold symlinks is never chowned or written through by root)."""
    d = lay.release_dir(rid)
    return Cmd("sh", "-c", "\n".join([
        "set -eu", NOLINK, sh("nolink {}", d).render(),
        'a=$(mktemp); trap \'rm -f -- "$a"\' EXIT',   # a file, not a pipe: a failed archive fails the step
        sh('git --git-dir={} archive --format=tar -o "$a" {}', lay.repo, commit).render(),
        as_user(lay.user, sh("tar -x -C {}", d)).render() + ' < "$a"',
    ]))


def artifact_extract_cmd(lay: Layout, rid: str, tmp: str, strip: int) -> Cmd:
    """Root opens the upload (private to the SSH user); the app user extracts it
    from stdin into its own release dir. tar cannot sniff compression on a
    stream, so the magic bytes pick the flag."""
    d = lay.release_dir(rid)
    tar = Cmd("runuser", "-u", lay.user, "--", "tar", "-x", Raw("$z"), "--no-same-owner", "-f", "-", "-C", d,
              *([f"--strip-components={int(strip)}"] if strip else []))
    return Cmd("sh", "-c", "\n".join([
        "set -eu",
        sh("trap 'rm -f -- {}' EXIT", tmp).render(),
        NOLINK, sh("nolink {}", d).render(),
        sh("case \"$(head -c 6 -- {} | od -An -tx1 | tr -d ' \\n')\" in", tmp).render()
        + " 1f8b*) z=-z;; fd377a585a00) z=-J;; 425a68*) z=-j;; *) z=;; esac",
        tar.render() + sh(" < {}", tmp).render(),
    ]))


def build_cmd(lay: Layout, rid: str, commands: list[str]) -> Cmd:
    """The inventory's build commands, in the release dir, as the app user, in
    their own session (setsid) so an interrupted deploy can kill the whole
    build (pid file in .fabship/build.pid). Output goes to stdout (2>&1)."""
    d = lay.release_dir(rid)
    body = ["set -e", sh("cd {}", d).render(),
            sh("export HOME={} npm_config_cache={} npm_config_update_notifier=false "
               "npm_config_fund=false npm_config_audit=false", lay.cache, f"{lay.cache}/npm").render()]
    for c in commands:
        body.append(sh('echo "+ "{}', c).render())
        body.append(c)
    inner = as_user(lay.user, Cmd(Raw("\n".join(body))))
    pidfile = f"{lay.state}/build.pid"
    return Cmd("sh", "-c", "\n".join([
        "set -eu", NOLINK, sh("nolink {} {}", lay.cache, d).render(),
        sh("install -d -o {} -g {} -m 0750 -- {}", lay.user, lay.group, lay.cache).render(),
        "exec 2>&1; rc=0",
        sh("setsid --wait sh -c 'echo $$ > \"$1\"; shift; exec \"$@\"' sh {} ", pidfile).render()
        + inner.render() + " || rc=$?",
        sh("rm -f -- {}; exit $rc", pidfile).render(),
    ]))


def kill_build_cmd(lay: Layout) -> Cmd:
    pidfile = f"{lay.state}/build.pid"
    return sh("if [ -f {} ]; then kill -TERM -- -\"$(cat {})\" 2>/dev/null || true; rm -f -- {}; fi",
              pidfile, pidfile, pidfile)


def release_meta_cmd(lay: Layout, rid: str, text: str) -> Cmd:
    """.fabship-release.json into the release dir: what this release is. Written
    by the app user: the dir is its own, so a root-owned file there would be no
    harder to replace, and root writing after the build could be steered by a
    link the build planted (releases.jsonl, root-only, is the record)."""
    return user_file_cmd(lay, f"{lay.release_dir(rid)}/.fabship-release.json", text=text)


# the app user writes PATH ($1, mode $2) from $3 or stdin: temp name beside it, fsync, rename
_USER_PUT = "\n".join([
    "set -eu", "umask 022", NOLINK, 'f="$1"; t="$1.fabship-tmp"', 'nolink "$f" "$t"', 'rm -f -- "$t"',
    'if [ "$#" -ge 3 ]; then printf "%s" "$3" > "$t"; else cat > "$t"; fi',
    'chmod -- "$2" "$t"', 'sync -- "$t"', 'mv -f -- "$t" "$f"',
])


def user_file_cmd(lay: Layout, path: str, *, text: str | None = None, from_file: str | None = None,
                  mode: str = "0644") -> Cmd:
    """A non-secret file in a dir the app user owns (release metadata, compose
    files), written as the app user: bytes from `text` (an argument: visible
    with -v) or from `from_file` (a root-readable upload, opened by root, fed
    on stdin and removed)."""
    put = Cmd("runuser", "-u", lay.user, "--", "sh", "-c", _USER_PUT, "sh", path, mode,
              *([text] if text is not None else []))
    if from_file is None:
        return put
    return Cmd("sh", "-c", "\n".join([
        "set -eu", sh("trap 'rm -f -- {}' EXIT", from_file).render(),
        put.render() + sh(" < {}", from_file).render(),
    ]))


def _q(s: str) -> str:
    return quote(s)   # the command builder's one quoting rule


# -- prepare on a host --------------------------------------------------------------------------

def upload_tmp_cmd(app: str) -> Cmd:
    """mktemp for an upload, after removing the app's uploads a dead run left
    behind (a deploy killed mid-upload left its partial bundle or tarball in
    /tmp, megabytes each time; the deploy lock is held, so no other run of the
    app is uploading now)."""
    prefix = f"/tmp/fabship-upload.{safe_part(app, 40)}"
    return Cmd(Raw(f"rm -f -- {prefix}.????????; mktemp {prefix}.XXXXXXXX"))  # exactly mktemp's 8: not app.b's


def upload(ctx, data: bytes, what: str) -> str:
    """Put bytes into a fresh private temp file on the host; return its path.
    SFTP into a mktemp'd file (0600 from the start, never readable by others):
    pipelined writes for bundles and tarballs of any size."""
    r = ctx.run(upload_tmp_cmd(str(ctx.inv.get("app.name") or "app")), what=f"upload {what}", root=False)
    path = r.stdout.strip().splitlines()[-1]
    sftp = ctx.connect().sftp()
    with sftp.open(path, "wb") as f:  # the existing 0600 file: opened for writing, mode kept
        f.set_pipelined(True)
        f.write(data)
    return path


def _prepare_git(ctx, src: Source, lay: Layout, st: HostState, rid: str) -> dict:
    ctx.change("release dir", lay.release_dir(rid), make_release_dir_cmd(lay, rid), git_init_cmd(lay))
    if src.local_repo:
        commit = src.commit
        sent: list[int] = []

        def bundle() -> tuple:
            """Only the commits the host's cache lacks (none when it has the commit), by SFTP."""
            if commit in st.git_heads or ctx.run(sh("git --git-dir={} cat-file -e {} 2>/dev/null && echo yes || "
                                                    "echo no", lay.repo, commit + "^{commit}"),
                                                 what="git cache").stdout.strip() == "yes":
                return ()
            data = make_bundle(src.local_repo, commit, st.git_heads)
            sent.append(len(data))
            return (git_fetch_bundle_cmd(lay, upload(ctx, data, "git bundle"), commit),)

        ctx.apply("git bundle", Change(
            f"upload the commits of {src.ref} ({commit[:12]}) the host lacks", bundle,
            outcome=lambda _: [Record(CHANGED, f"{sent[0]} bytes: {src.ref} ({commit[:12]})") if sent
                               else Record(OK, f"{commit[:12]} already in the host's cache")]))
    else:
        fetched = ctx.apply("git fetch", Change(
            f"{src.repo_url} @ {src.ref}", (git_fetch_url_cmd(lay, src.repo_url, src.ref),), tail=15,
            failed=Failure(f"{src.repo_url} @ {src.ref}", raised=f"git fetch of {src.ref} from {src.repo_url} failed"),
            outcome=lambda r: [Record(CHANGED, f"{src.ref} -> {r.stdout.strip().splitlines()[-1][:12]}")]))
        if not fetched.ran:  # a dry run fetched nothing: no commit to check out
            return {"commit": ""}
        commit = fetched.stdout.strip().splitlines()[-1]
    ctx.change("checkout", f"{commit[:12]} into {lay.release_dir(rid)}", git_checkout_cmd(lay, rid, commit))
    return {"commit": commit}


def _prepare_artifact(ctx, src: Source, lay: Layout, rid: str) -> dict:
    ctx.change("release dir", lay.release_dir(rid), make_release_dir_cmd(lay, rid))
    up = ctx.apply("upload artifact", Change(
        f"{src.artifact_name} ({len(src.artifact)} bytes)",
        lambda: (artifact_extract_cmd(lay, rid, upload(ctx, src.artifact, "artifact"), src.strip),),
        dry_message=f"{src.artifact_name} ({len(src.artifact)} bytes) into {lay.release_dir(rid)}"))
    return {"artifact_sha256": hashlib.sha256(src.artifact).hexdigest()[:16]} if up.ran else {}


def _prepare_image(ctx, src: Source, lay: Layout, rid: str) -> dict:
    ctx.change("release dir", lay.release_dir(rid), make_release_dir_cmd(lay, rid))
    ctx.change("pull image", src.image, Cmd("docker", "pull", "--quiet", src.image), timeout=900)
    return {"image": src.image}


def compose_env_text(src: Source, project: str) -> str:
    return render("deploy/compose.env.j2", project=project, tag=src.tag, tag_vars=src.tag_vars)


def _prepare_compose(ctx, src: Source, lay: Layout, st: HostState, rid: str) -> dict:
    from .activation import compose_base, compose_project

    if not st.compose_cmd:
        raise StepFailed(f"neither `docker compose` nor `docker-compose` is installed on {ctx.host.name}; "
                         "run `fab bootstrap` first")
    proj = compose_project(ctx, lay)
    d = lay.release_dir(rid)
    ctx.change("release dir", d, make_release_dir_cmd(lay, rid))
    ctx.apply("compose files", Change(
        f"{d}/docker-compose.yml, {d}/compose.env ({', '.join(src.tag_vars)}={src.tag})",
        lambda: (user_file_cmd(lay, f"{d}/docker-compose.yml", from_file=upload(ctx, src.compose_file, "compose file")),
                 user_file_cmd(lay, f"{d}/compose.env", text=compose_env_text(src, proj)))))
    ctx.change("pull images", f"project {proj}",
               Cmd(Raw(sh("cd {} && ", d).render()), *compose_base(st.compose_cmd, lay, rid, proj), "pull",
                   "--quiet"), timeout=900)
    return {"image": f"{','.join(src.tag_vars)}={src.tag}"}
