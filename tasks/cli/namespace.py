"""fabship's tasks, as `fab` (a fabfile importing `ns`) and the `fabship` command
(tasks/cli/program.py) see them. Thin on purpose: each task parses its options and
calls one function of the task's own module in this package."""
import gc

from invoke import Collection

from .base import COMMON, fabship_task

# What is loaded by now (fabric, paramiko, invoke, this package: ~35k objects) lives as long
# as the process: gc.freeze() takes it out of the cyclic GC, so no later full collection walks
# it again, the interpreter's at exit included (~50M instructions, ~15 ms of every `fab` start:
# bench/startup.py; issue 17). Objects made from here on are collected as before.
gc.freeze()

# The RunOptions each kind of task takes (tasks/cli/base.py): declared once, parsed
# once by the task's boundary, passed whole as `opts`.
READS = COMMON
CHANGES = COMMON + ("dry_run",)
RELEASES = COMMON + ("dry_run", "lock_wait", "gate")


@fabship_task(options=("inventory", "set", "limit"), help={})
def hosts(c, opts):
    """Print the resolved host table (name, address, user, source, tags). Connects to nothing."""
    from .hosts import show_hosts

    inv = opts.load()
    show_hosts(inv, inv.resolve_hosts(opts.limit))


@fabship_task(options=CHANGES + ("gate",),
              help=dict(env_file="local dotenv file to install as the app's env file "
                        "(default: the inventory's env.source)"))
def bootstrap(c, opts, env_file=None):
    """Turn bare hosts into app hosts: packages, swap, runtime, layout, env file, docker secrets, unit, nginx, TLS."""
    from .bootstrap import bootstrap as run_bootstrap

    run_bootstrap(opts, env_file=env_file)


@fabship_task(options=RELEASES,
              help=dict(ref="git source: branch, tag or commit to deploy (default: deploy.ref)",
                        artifact="artifact source: local directory or tarball to upload",
                        tag="image/compose source: the image tag to deploy",
                        strategy="blue_green (new beside old, switch, stop old) or restart",
                        batch="rolling batches: N hosts or N% at a time (default: all at once)",
                        max_fail="stop once more than N (or N%) hosts failed (default 0)",
                        rollback_fleet="on failure, roll back hosts already switched (default on; "
                                       "--no-rollback-fleet to keep them)"))
def deploy(c, opts, ref=None, artifact=None, tag=None, strategy=None, batch=None, max_fail=None,
           rollback_fleet=True):
    """Deploy a new release: build it, health-check it, switch, and roll back automatically on failure."""
    from .deploy import deploy as run_deploy

    run_deploy(opts, ref=ref, artifact=artifact, tag=tag, strategy=strategy, batch=batch, max_fail=max_fail,
               rollback_fleet=rollback_fleet)


@fabship_task(options=RELEASES, help=dict(to="release id to roll back to (default: the previous completed release)"))
def rollback(c, opts, to=None):
    """Re-point to the previous (or named) completed release, restart and health-check."""
    from .rollback import rollback as run_rollback

    run_rollback(opts, to=to)


@fabship_task(options=READS, help=dict(last="show only the newest N releases per host (default: all)"))
def releases(c, opts, last=None):
    """Show each host's releases (id, version, time, who, result) and which one is current."""
    from .rollback import releases as show_releases

    show_releases(opts, max_rows=int(last or 0))


@fabship_task(options=CHANGES, help=dict(force="also break a lock that looks live (held by a running process)"))
def unlock(c, opts, force=False):
    """Break a stale deploy lock left by a killed run (shows the holder; a live one only with --force)."""
    from .unlock import unlock as run_unlock

    run_unlock(opts, force=force)


@fabship_task(options=RELEASES,
              help=dict(env_file="local dotenv file with the new values (default: env.source)",
                        show_hashes="show a short hash of old and new values for changed keys"))
def rotate_env(c, opts, env_file=None, show_hashes=False):
    """Validate, install and apply a new env file; restore the old one if the app fails its health check."""
    from .rotate_env import rotate_env as run_rotate_env

    run_rotate_env(opts, env_file=env_file, show_hashes=show_hashes)


@fabship_task(options=READS,
              help=dict(stage="run only the checks a gate stage runs: bootstrap, deploy, rotate-env or rollback "
                        "(default: every check)",
                  only="only these checks, comma-separated names; a trailing * matches a prefix "
                       "(e.g. env_file*,http:*)",
                  write_ssh_config="write an OpenSSH config (strict host keys, the inventory's "
                                   "known_hosts and key) to PATH for `pytest --hosts=ssh://HOST "
                                   "--ssh-config=PATH`, then exit"))
def verify(c, opts, stage=None, only=None, write_ssh_config=None):
    """Run the testinfra verification suite against every host; print a pass/fail table."""
    from .verify import verify as run_verify

    run_verify(opts, stage=stage, only=only, ssh_config=write_ssh_config)


@fabship_task(options=READS, help=dict(lines="journal lines per unit (default 200)",
                                       out="also write each host's report to DIR/HOST.txt (mode 0600)"))
def diagnose(c, opts, lines=200, out=None):
    """Collect what an operator looks at when something is wrong (secrets masked)."""
    from .diagnose import diagnose as run_diagnose

    run_diagnose(opts, lines=lines, out=out)


@fabship_task(options=("inventory", "set", "verbose", "dry_run", "gate"),
              help=dict(dry_run="print the plan (what would be created or changed, with the API calls); "
                        "call nothing that writes",
                destroy="delete what this inventory's provision section manages (only resources "
                        "tagged with its project/env), in reverse dependency order; needs --yes",
                yes="confirm --destroy",
                delete_bucket="with --destroy: delete the S3 bucket and its objects (default: a "
                              "bucket that holds objects is kept)",
                then_bootstrap="once the host answers and its key is recorded, run fab bootstrap on it",
                env_file="with --then-bootstrap: as for fab bootstrap"))
def provision(c, opts, destroy=False, yes=False, delete_bucket=False, then_bootstrap=False, env_file=None):
    """Create the host's AWS resources (S3, IAM, security group, key pair, EC2, EIP, Route53) idempotently."""
    from ..provision.flow import provision as run_provision

    host = run_provision(opts.inventory, opts.set, opts.verbose, opts.dry_run, destroy=destroy, yes=yes,
                         delete_bucket=delete_bucket, then_bootstrap=then_bootstrap, gate=opts.gate,
                         env_file=env_file)
    if then_bootstrap and host is not None:
        from .bootstrap import bootstrap as run_bootstrap

        run_bootstrap(opts.but(limit=host.name, dry_run=False), env_file=env_file)


@fabship_task(help={"dir": "the ops repository to scaffold (default: the current directory)",
                    "name": "inventory/environment name (default: dev)",
                    "app": "app name (default: from the directory's name)",
                    "static": "a static host, [NAME=]ADDRESS (repeatable)",
                    "ec2_region": "find hosts by EC2 tag in this region (with --ec2-tag)",
                    "ec2_tag": "the tag, KEY=VALUE (a bare VALUE is the Name tag)",
                    "user": "SSH user (default: root, or ec2-user for EC2)",
                    "key_file": "SSH private key path, written to the git-ignored NAME.local.yaml"},
              iterable=("static",), incrementable=())
def init(c, dir=".", name="dev", app=None, static=None, ec2_region=None, ec2_tag=None, user=None, key_file=None):
    """Scaffold an ops repository (inventory, env contract stub, known_hosts policy, .gitignore, fabfile.py);
    never overwrites a file. Also: fabship init [DIR] [--name N] [--ec2 REGION TAG | --static HOST...]."""
    from .init import run_init

    ec2 = (ec2_region, ec2_tag) if (ec2_region or ec2_tag) else None
    run_init(dir, name=name, app=app, static=list(static or ()) or None, ec2=ec2, user=user, key_file=key_file)


@fabship_task(options=READS, help=dict(follow="follow: print new lines as they come until Ctrl-C",
                         since="only lines since then: 10m, 2h, 1d or a date/time such as '2025-01-31 12:00'",
                         lines="lines per host to start with (default 100, or 10 with -f)",
                         grep="only lines matching this regular expression (grep -E, after masking)"))
def logs(c, opts, follow=False, since=None, lines=None, grep=None):
    """The app's logs (journal, docker or compose) from every host, merged, host-prefixed, secrets masked."""
    from .logs import logs as run_logs

    run_logs(opts, follow=follow, since=since, lines=lines, grep=grep)


@fabship_task(name="exec", options=READS, help=dict(tty="an interactive terminal (exactly one host; output not masked)",
                                      service="compose: the service to exec in (default: the first one)"))
def exec_(c, opts, tty=False, service=None):
    """Run the command after -- on each host as the app user, in the current release, with the app's env."""
    from .app_exec import app_exec, remainder

    app_exec(remainder(), opts, tty=tty, service=service)


@fabship_task(options=CHANGES, help=dict(mode="on, off or status"))
def maintenance(c, mode, opts):
    """Maintenance mode: nginx answers 503 with a maintenance page (health and ACME paths excepted), or not."""
    from .maintenance import maintenance as run_maintenance

    run_maintenance(mode, opts)


@fabship_task(options=("inventory", "set"),
              help=dict(host="show it as this host (name or address) sees it: {host}/{address} expanded, its "
                        "address, user, port, groups, tags and vars",
                   schema="print the inventory format as a JSON Schema (for editors' YAML support) and exit"))
def config(c, opts, host=None, schema=False):
    """Show the merged inventory, each value with the file it came from (secrets masked); --schema: its JSON Schema."""
    from .config import show_config

    show_config(opts.inventory, opts.set, host=host, schema=schema)


TASKS = (init, hosts, config, provision, bootstrap, deploy, rollback, releases, unlock, rotate_env, verify, diagnose,
         logs, exec_, maintenance,)


def collection() -> Collection:
    """A fresh collection of fabship's tasks (a fabfile may add its own to it)."""
    from .remainder import install_executor  # not app_exec: it loads the command layer

    install_executor()  # `fab exec -- CMD`: the text after -- is the task's, not fabric's
    return Collection(*TASKS)


ns = collection()
